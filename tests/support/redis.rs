//! A private Redis server per test: daemonized on a free port of 127.0.0.1 with its
//! own folder, as a plain redis-server would be; killed when dropped (also when the
//! test panics). Restores restart it through [`Redis::start_command`] and
//! [`Redis::stop_command`], which the test writes into the config.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub password: Option<String>,
}

impl Redis {
    /// Start a server; with a password, clients must AUTH.
    pub fn start(password: Option<&str>) -> Redis {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "redis-server not found: run scripts/test, which installs it"
        );
        let dir = tempfile::Builder::new()
            .prefix("pronto-test-redis-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let r = Redis {
            dir,
            port: super::pg::free_port(),
            password: password.map(str::to_string),
        };
        let o = Command::new("sh")
            .arg("-c")
            .arg(r.start_command())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "redis-server failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        r.wait_up();
        r
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.path().join("redis.pid")
    }

    /// The shell command that starts it (daemonized, RDB in data/dump.rdb, no saves, no
    /// 5 s wait for more replicas before a `--rdb` transfer); the settings (and the
    /// password) are in its config file, not in argv.
    pub fn start_command(&self) -> String {
        let conf = self.dir.path().join("redis.conf");
        if !conf.exists() {
            let mut s = format!(
                "bind 127.0.0.1\nport {}\ndir \"{}\"\ndbfilename dump.rdb\nsave \"\"\nappendonly no\n\
                 daemonize yes\nrepl-diskless-sync-delay 0\npidfile \"{}\"\nlogfile \"{}\"\n",
                self.port,
                self.data_dir().display(),
                self.pidfile().display(),
                self.dir.path().join("redis.log").display()
            );
            if let Some(p) = &self.password {
                s.push_str(&format!("requirepass \"{p}\"\n"));
            }
            std::fs::write(&conf, s).unwrap();
        }
        format!("redis-server '{}'", conf.display())
    }

    /// The shell command that stops it (SIGTERM to the pid in its pidfile).
    pub fn stop_command(&self) -> String {
        format!("kill $(cat '{}')", self.pidfile().display())
    }

    fn wait_up(&self) {
        let start = Instant::now();
        while self
            .try_cli(&["PING"])
            .map(|s| s.trim() != "PONG")
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new("redis-cli");
        c.arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .stdin(Stdio::null());
        match &self.password {
            Some(p) => c.env("REDISCLI_AUTH", p),
            None => c.env_remove("REDISCLI_AUTH"),
        };
        let o = c.output().map_err(|e| e.to_string())?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success()
            && !out.starts_with("ERR")
            && !out.starts_with("NOAUTH")
            && !out.starts_with("WRONGPASS")
        {
            Ok(out)
        } else {
            Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        match self.try_cli(args) {
            Ok(s) => s,
            Err(e) => panic!("redis-cli {args:?} failed: {e}"),
        }
    }

    /// Every key of every database: "dbN key" → its type, encoding, a digest of its value,
    /// and whether it has a TTL (and that the TTL is still more than `min_ttl` seconds).
    ///
    /// The digest is the sha1 of `DUMP`, except for hashtable-encoded hashes and sets,
    /// whose DUMP follows the hash table's iteration order (which a reload may change):
    /// for those it is the sha1 of the sorted members (and values).
    pub fn fingerprint(&self, min_ttl: i64) -> std::collections::BTreeMap<String, String> {
        const SCRIPT: &str = "local out = {} \
            local keys = redis.call('KEYS', '*') table.sort(keys) \
            for _, k in ipairs(keys) do \
              local ttl = redis.call('TTL', k) \
              local t = 'none' \
              if ttl >= 0 then if ttl > tonumber(ARGV[1]) then t = 'ttl-ok' else t = 'ttl-short:' .. ttl end end \
              local ty = redis.call('TYPE', k)['ok'] \
              local enc = redis.call('OBJECT', 'ENCODING', k) \
              local d \
              if enc == 'hashtable' and ty == 'hash' then \
                local a = redis.call('HGETALL', k) local p = {} \
                for i = 1, #a, 2 do p[#p + 1] = a[i] .. '=' .. a[i + 1] end \
                table.sort(p) d = 'sorted:' .. redis.sha1hex(table.concat(p, '\\n')) \
              elseif enc == 'hashtable' and ty == 'set' then \
                local a = redis.call('SMEMBERS', k) table.sort(a) \
                d = 'sorted:' .. redis.sha1hex(table.concat(a, '\\n')) \
              else d = 'dump:' .. redis.sha1hex(redis.call('DUMP', k)) end \
              out[#out + 1] = k .. ' ' .. ty .. ' ' .. enc .. ' ' .. d .. ' ' .. t \
            end return out";
        let mut out = std::collections::BTreeMap::new();
        for db in 0..16 {
            let text = self.cli(&[
                "-n",
                &db.to_string(),
                "EVAL",
                SCRIPT,
                "0",
                &min_ttl.to_string(),
            ]);
            for line in text.lines().filter(|l| !l.is_empty()) {
                let (key, rest) = line.split_once(' ').unwrap();
                out.insert(format!("db{db} {key}"), rest.to_string());
            }
        }
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pidfile()) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
