//! `list`: local archives and each remote's, side by side.

use crate::error::Exit;
use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use pronto_backends::ObjectMeta;

use crate::catalog;
use crate::config::Config;
use crate::fsutil::human_bytes;
use crate::plan::RemoteState;
use crate::remotes;

#[derive(Serialize)]
struct Row {
    id: String,
    file: String,
    size: Option<u64>,
    /// `complete`, `incomplete` or `absent`, and the tier for local copies.
    local: String,
    tier: Option<String>,
    remotes: BTreeMap<String, String>,
    /// Why the local copy is unusable (`manifest unreadable: ...`); flagged, not fatal.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    /// Named in the future (a wrong clock): never `latest`, never counted as fresh.
    future: bool,
}

/// Print the table (or JSON). Returns the exit code: 0, or 3 when a remote could not be listed.
pub async fn run(
    cfg: &Config,
    only: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit> {
    let now = chrono::Utc::now();
    let local = catalog::scan(&cfg.local)?;
    let selected = remotes::selected(cfg, only)?;
    let mut states: Vec<(String, Result<RemoteState, String>)> = Vec::new();
    for remote in &selected {
        let st = match remotes::open_read_only(remote) {
            Ok(r) => remotes::read_state(&r, &cfg.local.prefix)
                .await
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        };
        states.push((remote.name.clone(), st));
    }

    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for a in &local {
        rows.insert(
            a.name.id.clone(),
            Row {
                id: a.name.id.clone(),
                file: a.name.file.clone(),
                size: a.manifest.as_ref().map(|m| m.size),
                local: if a.manifest.is_some() {
                    "complete"
                } else if a.problem.is_some() {
                    "unreadable"
                } else {
                    "incomplete"
                }
                .into(),
                tier: Some(a.tier.label().into()),
                remotes: BTreeMap::new(),
                problem: a.problem.clone(),
                future: catalog::named_in_future(a.name.time, now),
            },
        );
    }
    for (name, st) in &states {
        let Ok(st) = st else { continue };
        for (id, ra) in &st.archives {
            let row = rows.entry(id.clone()).or_insert_with(|| Row {
                id: id.clone(),
                file: ra.name.file.clone(),
                size: ra.size,
                local: "absent".into(),
                tier: None,
                remotes: BTreeMap::new(),
                problem: None,
                future: catalog::named_in_future(ra.name.time, now),
            });
            let status = if ra.complete() {
                "complete"
            } else {
                "incomplete"
            };
            row.remotes.insert(name.clone(), status.into());
        }
    }
    for row in rows.values_mut() {
        for (name, st) in &states {
            row.remotes.entry(name.clone()).or_insert_with(|| match st {
                Ok(_) => "absent".into(),
                Err(_) => "unknown".into(),
            });
        }
    }

    if json {
        let v = serde_json::json!({
            "archives": rows.values().collect::<Vec<_>>(),
            "errors": states.iter().filter_map(|(n, s)| s.as_ref().err().map(|e| serde_json::json!({"remote": n, "error": e}))).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let mut header = format!("{:<16} {:>10}  {:<20}", "ID", "SIZE", "LOCAL");
        for (name, _) in &states {
            header.push_str(&format!(" {name:<12}"));
        }
        writeln!(out, "{}", header.trim_end())?;
        for row in rows.values() {
            let local = match (&row.tier, row.local.as_str()) {
                (Some(t), "complete") if t != "-" => format!("complete ({t})"),
                _ => row.local.clone(),
            };
            let mut line = format!(
                "{:<16} {:>10}  {:<20}",
                row.id,
                row.size.map(human_bytes).unwrap_or_else(|| "?".into()),
                local
            );
            for (name, _) in &states {
                line.push_str(&format!(" {:<12}", row.remotes[name]));
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        writeln!(
            out,
            "{} archive(s); local folder {}",
            rows.len(),
            cfg.local.dir.display()
        )?;
        for row in rows.values() {
            if let Some(p) = &row.problem {
                writeln!(out, "WARNING: local {}: {p}", row.file)?;
            }
            if row.future {
                let time = catalog::parse_id(&row.id).unwrap_or_default();
                writeln!(out, "WARNING: {}", catalog::future_warning(&row.file, time))?;
            }
        }
        if let Some(h) = crate::catalog::adoption_hint(&local) {
            writeln!(out, "{h}")?;
        }
        for (name, st) in &states {
            if let Err(e) = st {
                writeln!(out, "ERROR: {}", crate::remotes::unlisted(name, e))?;
            }
        }
    }
    // The local folder was listed: at worst a partial run.
    let failed = states.iter().filter(|(_, s)| s.is_err()).count();
    Ok(Exit::for_locations(failed, states.len() + 1))
}

/// `list --all-hosts`: every host's archives on each remote (read from the whole root,
/// not only this host's namespace), with `-` for archives in the flat layout.
pub async fn list_all_hosts(
    cfg: &crate::config::Config,
    only: Option<&str>,
    json: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Exit> {
    use crate::fsutil::human_bytes;

    #[derive(serde::Serialize)]
    struct Row {
        remote: String,
        host: String,
        id: String,
        file: String,
        size: Option<u64>,
        status: &'static str,
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for remote in crate::remotes::selected(cfg, only)? {
        let mut whole = remote.clone();
        whole.host_id = None;
        let listing = match crate::remotes::open_read_only(&whole) {
            Ok(r) => remotes::list_all(&r).await.map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        };
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                errors.push((remote.name.clone(), e));
                continue;
            }
        };
        // The flat layout first, then each host's namespace.
        let mut groups: Vec<(String, Vec<ObjectMeta>)> = vec![(
            crate::host_namespace::FLAT.into(),
            listing
                .iter()
                .filter(|o| !o.key.contains('/'))
                .cloned()
                .collect(),
        )];
        for h in crate::host_namespace::hosts_in(&listing) {
            let ns = format!("{h}/");
            let mine = listing
                .iter()
                .filter_map(|o| {
                    let k = o.key.strip_prefix(&ns)?;
                    Some(ObjectMeta {
                        key: k.to_string(),
                        ..o.clone()
                    })
                })
                .collect();
            groups.push((h, mine));
        }
        for (host, objs) in groups {
            let st = crate::plan::remote_state(&cfg.local.prefix, &objs);
            for a in st.archives.values() {
                rows.push(Row {
                    remote: remote.name.clone(),
                    host: host.clone(),
                    id: a.name.id.clone(),
                    file: a.name.file.clone(),
                    size: a.size,
                    status: if a.complete() {
                        "complete"
                    } else {
                        "incomplete"
                    },
                });
            }
        }
    }
    if json {
        let v = serde_json::json!({
            "archives": rows,
            "errors": errors.iter().map(|(n, e)| serde_json::json!({"remote": n, "error": e})).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "{:<12} {:<20} {:<16} {:>10}  STATUS",
            "REMOTE", "HOST", "ID", "SIZE"
        )?;
        for r in &rows {
            writeln!(
                out,
                "{:<12} {:<20} {:<16} {:>10}  {}",
                r.remote,
                r.host,
                r.id,
                r.size.map(human_bytes).unwrap_or_else(|| "?".into()),
                r.status
            )?;
        }
        writeln!(
            out,
            "{} archive(s); restore another host's with `pull --host HOST ID`",
            rows.len()
        )?;
        for (name, e) in &errors {
            writeln!(out, "ERROR: {}", crate::remotes::unlisted(name, e))?;
        }
    }
    // As `list`: remotes that could not be listed make a partial listing (exit 3).
    Ok(if errors.is_empty() {
        Exit::Ok
    } else {
        Exit::Partial
    })
}
