//! Archive-name parsing (names come from remote listings): never a panic, and a name that
//! parses has the id that `id_from_user` and `parse_id` agree on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pronto_offsite::catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the prefix, the rest the name (so both vary).
    let (prefix, name) = s.split_once('\n').unwrap_or(("pronto-app-backup", s));
    if let Some(n) = catalog::parse_name(prefix, name) {
        assert!(
            catalog::parse_id(&n.id).is_some(),
            "{name:?} parsed to id {:?}",
            n.id
        );
        assert_eq!(
            catalog::id_from_user(prefix, &n.id).as_deref(),
            Some(n.id.as_str())
        );
    }
    let _ = catalog::id_from_user(prefix, name);
    let _ = catalog::parse_id(name);
});
