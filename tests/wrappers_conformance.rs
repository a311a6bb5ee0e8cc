//! The backend wrappers pass the same conformance suite as the backends they wrap: a
//! host's namespace (`host_id`) and a bandwidth limit (`bwlimit`), each over a local
//! folder, so that nothing a wrapper forwards (or forgets to forward) breaks the
//! [`Backend`] contract that push, prune and pull rely on.

use std::sync::Arc;

use pronto_backends::conformance::Harness;
use pronto_backends::local::LocalBackend;
use pronto_backends::Backend;

/// A harness over one folder, each instance wrapped by `wrap`.
fn wrapped(wrap: fn(Arc<dyn Backend>) -> Arc<dyn Backend>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("remote");
    Harness::new(move || {
        let root = root.clone();
        async move {
            let inner = Arc::new(LocalBackend::new(root).expect("open local backend"));
            wrap(inner)
        }
    })
    .keep_alive(dir)
}

mod namespaced {
    use super::*;
    use pronto_offsite::host_namespace::NamespacedBackend;

    fn harness() -> Harness {
        wrapped(|inner| Arc::new(NamespacedBackend::new(inner, "host-a")))
    }

    pronto_backends::conformance_suite!(harness = harness());
}

mod throttled {
    use super::*;
    use pronto_offsite::bwlimit::{Schedule, ThrottledBackend};

    fn harness() -> Harness {
        // A limit high enough not to slow the suite, low enough to be applied.
        wrapped(|inner| {
            Arc::new(ThrottledBackend::new(
                inner,
                Schedule::parse("4GiB").expect("a rate"),
            ))
        })
    }

    pronto_backends::conformance_suite!(harness = harness());
}
