//! A small HTTP/1.1-aware TCP proxy for tests, between a client and a server on
//! 127.0.0.1: it records every request (method, target, body size, arrival time), and can
//! corrupt a request body in flight, answer some requests itself with a canned response
//! (all of them, or the next N: [`Proxy::respond_n`], keeping the connection alive), cut
//! the connection after N body bytes of the next few matching requests
//! ([`Proxy::reset_after`]), or hold requests once a number of them went through (to stop
//! a client at a known point).
//!
//! Only the client → server direction is parsed (request line, headers, `Content-Length`
//! body); responses are copied through untouched. Chunked request bodies are not
//! supported (object_store never sends them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Order of arrival over the proxy's life.
    pub id: u64,
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Body bytes announced.
    pub len: u64,
    /// Whether the whole body was forwarded to the server.
    pub forwarded: bool,
    /// When its request line and headers had arrived.
    pub at: Instant,
    /// What the proxy did instead of forwarding it, if anything: `"respond"` (answered by
    /// [`Proxy::respond_n`] or [`Proxy::canned`]) or `"reset"` ([`Proxy::reset_after`]).
    pub injected: Option<&'static str>,
    /// The request's headers as sent, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The value of header `name` (any case), if the request had it.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `partNumber=N` of an UploadPart request.
    pub fn part_number(&self) -> Option<u32> {
        if self.method != "PUT" {
            return None;
        }
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .find_map(|kv| kv.strip_prefix("partNumber="))
            .and_then(|n| n.parse().ok())
    }
}

type Pred = Box<dyn Fn(&Seen) -> bool + Send + Sync>;

/// Answer the next `left` requests matching `pred` with `response`.
struct Respond {
    pred: Pred,
    left: usize,
    response: Vec<u8>,
}

/// Cut the connection of the next `left` requests matching `pred` after `bytes` body bytes.
struct Reset {
    pred: Pred,
    left: usize,
    bytes: u64,
}

#[derive(Default)]
struct Rules {
    /// One-shot answers, first matching rule with answers left wins.
    respond: Vec<Respond>,
    /// One-shot connection cuts.
    reset: Vec<Reset>,
    /// Flip one byte in the body of requests matching this.
    corrupt: Option<Pred>,
    /// Answer requests matching this with these bytes instead of forwarding them.
    canned: Option<(Pred, Vec<u8>)>,
    /// Let `n` requests matching the predicate through, then hold the rest.
    hold_after: Option<(Pred, usize)>,
}

struct Shared {
    next_id: std::sync::atomic::AtomicU64,
    seen: Mutex<Vec<Seen>>,
    rules: Mutex<Rules>,
    passed: Mutex<usize>,
    released: (Mutex<bool>, Condvar),
}

/// A running proxy. Threads live until the process ends.
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Proxy 127.0.0.1:<new port> → 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            next_id: std::sync::atomic::AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            rules: Mutex::new(Rules::default()),
            passed: Mutex::new(0),
            released: (Mutex::new(false), Condvar::new()),
        });
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    let _ = serve(conn, upstream, &s);
                });
            }
        });
        Proxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.shared.seen.lock().unwrap().clear();
    }

    pub fn corrupt(&self, pred: impl Fn(&Seen) -> bool + Send + Sync + 'static) {
        self.shared.rules.lock().unwrap().corrupt = Some(Box::new(pred));
    }

    pub fn canned(&self, pred: impl Fn(&Seen) -> bool + Send + Sync + 'static, response: &str) {
        self.shared.rules.lock().unwrap().canned =
            Some((Box::new(pred), response.as_bytes().to_vec()));
    }

    /// Answer the next `times` requests matching `pred` with `response` (a whole HTTP/1.1
    /// response, see [`http_response`]) instead of forwarding them, then forward again.
    /// The request body is read and dropped, and the connection stays open (keep-alive)
    /// unless the response says `Connection: close`.
    pub fn respond_n(
        &self,
        pred: impl Fn(&Seen) -> bool + Send + Sync + 'static,
        times: usize,
        response: &str,
    ) {
        self.shared.rules.lock().unwrap().respond.push(Respond {
            pred: Box::new(pred),
            left: times,
            response: response.as_bytes().to_vec(),
        });
    }

    /// For the next `times` requests matching `pred`: forward the request head and the
    /// first `n_bytes` of its body, then close both connections (the client sees its
    /// connection reset in the middle of the body; the server gets a truncated request).
    pub fn reset_after(
        &self,
        pred: impl Fn(&Seen) -> bool + Send + Sync + 'static,
        n_bytes: u64,
        times: usize,
    ) {
        self.shared.rules.lock().unwrap().reset.push(Reset {
            pred: Box::new(pred),
            left: times,
            bytes: n_bytes,
        });
    }

    pub fn hold_after(&self, n: usize, pred: impl Fn(&Seen) -> bool + Send + Sync + 'static) {
        *self.shared.passed.lock().unwrap() = 0;
        *self.shared.released.0.lock().unwrap() = false;
        self.shared.rules.lock().unwrap().hold_after = Some((Box::new(pred), n));
    }

    /// Drop every rule. Held requests are abandoned (both connections closed, nothing
    /// forwarded): their client is usually gone, and a late, truncated copy must not
    /// reach the server while the test goes on.
    pub fn reset(&self) {
        *self.shared.rules.lock().unwrap() = Rules::default();
        let (m, cv) = &self.shared.released;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn serve(client: TcpStream, upstream: u16, s: &Shared) -> std::io::Result<()> {
    let mut server: Option<TcpStream> = None;
    let r = serve_inner(&client, upstream, s, &mut server);
    // The response pipe holds a clone of the server socket: shut it down so the server
    // sees the end of a request the client abandoned (as it would without the proxy).
    if let Some(sv) = &server {
        if !matches!(r, Ok(true)) {
            let _ = sv.shutdown(Shutdown::Both);
        }
    }
    r.map(|_| ())
}

/// Ok(true): the client closed cleanly between requests.
fn serve_inner(
    client: &TcpStream,
    upstream: u16,
    s: &Shared,
    server: &mut Option<TcpStream>,
) -> std::io::Result<bool> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client_w = client.try_clone()?;
    loop {
        // Request line and headers.
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line)? == 0 {
                if let Some(sv) = server.as_ref() {
                    let _ = sv.shutdown(Shutdown::Write);
                }
                return Ok(true);
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut first = text.lines().next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let len: u64 = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        assert!(
            !text
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "proxy: chunked request bodies are not supported"
        );
        let mut seen = Seen {
            id: s.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            method,
            target,
            len,
            forwarded: false,
            at: Instant::now(),
            injected: None,
            headers: text
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
        };
        // One-shot rules: decided (and counted) before the request is recorded.
        let (respond, cut) = {
            let mut rules = s.rules.lock().unwrap();
            let respond = rules
                .respond
                .iter_mut()
                .find(|r| r.left > 0 && (r.pred)(&seen))
                .map(|r| {
                    r.left -= 1;
                    r.response.clone()
                });
            let cut = match respond {
                Some(_) => None,
                None => rules
                    .reset
                    .iter_mut()
                    .find(|r| r.left > 0 && (r.pred)(&seen))
                    .map(|r| {
                        r.left -= 1;
                        r.bytes
                    }),
            };
            (respond, cut)
        };
        if respond.is_some() {
            seen.injected = Some("respond");
        } else if cut.is_some() {
            seen.injected = Some("reset");
        }
        s.seen.lock().unwrap().push(seen.clone());

        if let Some(resp) = respond {
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
            client_w.write_all(&resp)?;
            client_w.flush()?;
            let close = String::from_utf8_lossy(&resp)
                .to_ascii_lowercase()
                .contains("connection: close");
            if close {
                let _ = client_w.shutdown(Shutdown::Both);
                return Ok(true);
            }
            continue;
        }

        // Canned answer?
        let canned = {
            let rules = s.rules.lock().unwrap();
            rules
                .canned
                .as_ref()
                .filter(|(p, _)| p(&seen))
                .map(|(_, r)| r.clone())
        };
        if let Some(resp) = canned {
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
            client_w.write_all(&resp)?;
            client_w.flush()?;
            let _ = client_w.shutdown(Shutdown::Both);
            return Ok(true);
        }

        // Hold?
        let hold = {
            let rules = s.rules.lock().unwrap();
            match &rules.hold_after {
                Some((p, n)) if p(&seen) => {
                    let mut passed = s.passed.lock().unwrap();
                    if *passed >= *n {
                        true
                    } else {
                        *passed += 1;
                        false
                    }
                }
                _ => false,
            }
        };
        if hold {
            let (m, cv) = &s.released;
            let mut released = m.lock().unwrap();
            while !*released {
                released = cv.wait(released).unwrap();
            }
            let _ = client.shutdown(Shutdown::Both);
            return Ok(false);
        }

        let corrupt = s
            .rules
            .lock()
            .unwrap()
            .corrupt
            .as_ref()
            .is_some_and(|p| p(&seen));
        if server.is_none() {
            let sv = TcpStream::connect(("127.0.0.1", upstream))?;
            let mut from = sv.try_clone()?;
            let mut to = client.try_clone()?;
            thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Both);
            });
            *server = Some(sv);
        }
        let sv = server.as_mut().unwrap();
        sv.write_all(&head)?;
        if let Some(n_bytes) = cut {
            // Forward the first n_bytes of the body, then drop both sides.
            let mut first = (&mut reader).take(n_bytes.min(len));
            std::io::copy(&mut first, sv)?;
            sv.flush()?;
            let _ = sv.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(false);
        }
        let mut left = len;
        let mut buf = vec![0u8; 256 * 1024];
        let mut flipped = false;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                // The client went away in the middle of a body.
                return Ok(false);
            }
            if corrupt && !flipped {
                buf[n / 2] ^= 0x01;
                flipped = true;
            }
            sv.write_all(&buf[..n])?;
            left -= n as u64;
        }
        sv.flush()?;
        seen.forwarded = true;
        // (The list may have been cleared meanwhile.)
        if let Some(x) = s.seen.lock().unwrap().iter_mut().find(|x| x.id == seen.id) {
            x.forwarded = true;
        }
    }
}

/// A whole HTTP/1.1 response with a `Content-Length` (for [`Proxy::respond_n`]).
pub fn http_response(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// An S3 error response: `<Error><Code>code</Code><Message>message</Message></Error>`.
pub fn s3_error(
    status: u16,
    reason: &str,
    code: &str,
    message: &str,
    headers: &[(&str, &str)],
) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>pronto-test-proxy</RequestId></Error>"
    );
    let mut h = vec![("Content-Type", "application/xml")];
    h.extend_from_slice(headers);
    http_response(status, reason, &h, &body)
}
