//! The README's alert rules, evaluated against the textfile a real `hook` writes: they
//! fire on a failed backup, a failed push and a stale remote, and stay quiet on a good
//! night. promtool is not installed here, so a tiny evaluator below reads the textfile and
//! does the rules' arithmetic (the two shapes the README uses: `A > ignoring(reason) B`
//! and `time() - A > N * M`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::{text, Env};

type Labels = BTreeMap<String, String>;

/// One sample of the textfile.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// `name{k="v",...}` (no commas or quotes inside values: ours have none in these tests).
fn selector(s: &str) -> (String, Labels) {
    let s = s.trim();
    let (name, rest) = s.split_once('{').unwrap_or((s, "}"));
    let mut labels = Labels::new();
    for kv in rest
        .trim_end_matches('}')
        .split(',')
        .filter(|x| !x.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap();
        labels.insert(k.trim().into(), v.trim().trim_matches('"').into());
    }
    (name.trim().into(), labels)
}

fn parse_textfile(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (sel, v) = l.rsplit_once(' ').unwrap();
            let (name, labels) = selector(sel);
            Sample {
                name,
                labels,
                value: v.parse().unwrap(),
            }
        })
        .collect()
}

/// The samples a selector picks.
fn select<'a>(samples: &'a [Sample], sel: &str) -> Vec<&'a Sample> {
    let (name, want) = selector(sel);
    samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect()
}

/// The label sets for which `expr` fires at Unix time `now`.
fn fires(expr: &str, samples: &[Sample], now: f64) -> Vec<Labels> {
    if let Some((lhs, rhs)) = expr.split_once(" > ignoring(reason) ") {
        let right = select(samples, rhs);
        return select(samples, lhs)
            .into_iter()
            .filter(|l| {
                let mut key = l.labels.clone();
                key.remove("reason");
                right.iter().any(|r| r.labels == key && l.value > r.value)
            })
            .map(|l| l.labels.clone())
            .collect();
    }
    let rest = expr
        .strip_prefix("time() - ")
        .unwrap_or_else(|| panic!("an expression shape the evaluator does not know: {expr}"));
    let (sel, threshold) = rest.split_once(" > ").unwrap();
    let threshold: f64 = threshold
        .split('*')
        .map(|n| n.trim().parse::<f64>().unwrap())
        .product();
    select(samples, sel)
        .into_iter()
        .filter(|s| now - s.value > threshold)
        .map(|s| s.labels.clone())
        .collect()
}

/// (alert name, expr) from the rules block of the operations page (docs/operations.md).
fn readme_rules() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let start = readme
        .find("- name: pronto-offsite")
        .expect("the alert rules block in docs/operations.md");
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let mut rules = Vec::new();
    let mut name = None;
    for l in block.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("- alert: ") {
            name = Some(n.to_string());
        } else if let Some(e) = l.strip_prefix("expr: ") {
            rules.push((name.take().unwrap(), e.to_string()));
        }
    }
    assert_eq!(rules.len(), 3, "{block}");
    rules
}

/// Which alerts fire (name → label sets) on the textfile at `now`.
fn alerts(textfile: &Path, now: f64) -> BTreeMap<String, Vec<Labels>> {
    let samples = parse_textfile(&std::fs::read_to_string(textfile).unwrap());
    readme_rules()
        .into_iter()
        .map(|(n, e)| (n, fires(&e, &samples, now)))
        .filter(|(_, f)| !f.is_empty())
        .collect()
}

fn value(textfile: &Path, sel: &str) -> f64 {
    let samples = parse_textfile(&std::fs::read_to_string(textfile).unwrap());
    let found = select(&samples, sel);
    assert_eq!(found.len(), 1, "{sel} in the textfile: {found:?}");
    found[0].value
}

fn now() -> f64 {
    chrono::Utc::now().timestamp() as f64
}

fn hook(env: &Env, want: i32) {
    // Runs are a second apart, so each one's timestamps differ from the last one's.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = env.run(&["hook"]);
    assert_eq!(o.status.code(), Some(want), "{}", text(&o));
}

#[test]
fn readme_alert_rules_fire_on_failed_backup_failed_push_and_stale_remote() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/index.html"), "<h1>pronto</h1>").unwrap();
    let prom = env.path("metrics/pronto_offsite.prom");
    env.write_config(&format!("\n[metrics]\ntextfile = \"{}\"\n", prom.display()));

    // A good night: nothing fires.
    hook(&env, 0);
    assert!(
        alerts(&prom, now()).is_empty(),
        "{:?}",
        alerts(&prom, now())
    );
    let backup_ok = value(
        &prom,
        "pronto_offsite_last_success_timestamp_seconds{step=\"backup\"}",
    );
    let local_ok = value(&prom, "pronto_offsite_local_last_success_timestamp_seconds");

    // The backup fails (its source is gone); the push of older archives succeeds.
    std::fs::rename(env.path("src"), env.path("src.away")).unwrap();
    hook(&env, 1);
    let fired = alerts(&prom, now());
    assert_eq!(
        fired.keys().collect::<Vec<_>>(),
        ["ProntoBackupFailed"],
        "{fired:?}"
    );
    assert_eq!(fired["ProntoBackupFailed"][0]["reason"], "not_found");
    assert_eq!(
        value(
            &prom,
            "pronto_offsite_last_success_timestamp_seconds{step=\"backup\"}"
        ),
        backup_ok,
        "the backup's last success moved on a night the backup failed"
    );
    assert_eq!(
        value(&prom, "pronto_offsite_local_last_success_timestamp_seconds"),
        local_ok
    );

    // The next night the backup works but the remote's folder is a plain file.
    std::fs::rename(env.path("src.away"), env.path("src")).unwrap();
    std::fs::remove_dir_all(env.remote()).unwrap();
    std::fs::write(env.remote(), "not a folder").unwrap();
    hook(&env, 3);
    let fired = alerts(&prom, now());
    assert_eq!(
        fired.keys().collect::<Vec<_>>(),
        ["ProntoPushFailed"],
        "{fired:?}"
    );
    assert_eq!(fired["ProntoPushFailed"][0]["remote"], "nas");

    // Still failing 27 hours later: the remote is stale too.
    let later = alerts(&prom, now() + 27.0 * 3600.0);
    assert_eq!(
        later.keys().collect::<Vec<_>>(),
        ["ProntoPushFailed", "ProntoRemoteStale"],
        "{later:?}"
    );
    assert_eq!(later["ProntoRemoteStale"][0]["remote"], "nas");
}
