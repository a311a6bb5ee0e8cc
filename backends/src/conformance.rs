//! The conformance suite every backend must pass.
//!
//! Each case is a `pub async fn case(h: &Harness)` that panics with a clear message when
//! the backend breaks the [`Backend`] contract. Cases write only under their own random
//! prefix (`t-<hex>/`) and delete what they wrote, so they can run concurrently against
//! one shared server. Assertions are on real outcomes: bytes read back, objects absent,
//! error variants.
//!
//! A backend runs the whole suite with one line in its test file; cases its server cannot
//! honour are listed with a reason and show up as ignored tests:
//!
//! ```ignore
//! use pronto_backends::conformance::Harness;
//!
//! fn harness() -> Harness {
//!     let dir = tempfile::tempdir().unwrap();
//!     let root = dir.path().join("remote");
//!     Harness::new(move || {
//!         let root = root.clone();
//!         async move { Arc::new(LocalBackend::new(root).unwrap()) as Arc<dyn Backend> }
//!     })
//!     .keep_alive(dir)
//! }
//!
//! pronto_backends::conformance_suite!(
//!     harness = harness(),
//!     skip = {
//!         complete_with_wrong_whole_sha256_rejected_nothing_visible: "server cannot hash on complete",
//!     },
//! );
//! ```
//!
//! The test file needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
//! The harness expression is evaluated inside each (async) test, so it may `.await`.

use std::any::Any;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use crate::{sha256_of, Backend, BackendError, Capabilities, ObjectMeta, PartReceipt, UploadId};

/// Opens a backend instance. Every call must open a *new* instance over the *same*
/// storage, as a restarted process would.
pub type MakeBackend = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Backend>> + Send + Sync>;

/// What a case needs: a factory of backend instances over one storage, plus anything
/// that must stay alive while the case runs (a temp dir, a server process).
pub struct Harness {
    make: MakeBackend,
    guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl Harness {
    /// A harness whose `make` opens a fresh backend instance over the same storage on
    /// every call.
    pub fn new<F, Fut>(make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Arc<dyn Backend>> + Send + 'static,
    {
        Harness {
            make: Box::new(move || Box::pin(make())),
            guards: Vec::new(),
        }
    }

    /// Keep `guard` alive as long as the harness (dropped after the case).
    pub fn keep_alive(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }

    /// Open a new backend instance.
    pub async fn backend(&self) -> Arc<dyn Backend> {
        (self.make)().await
    }
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("guards", &self.guards.len())
            .finish_non_exhaustive()
    }
}

/// Every case, in the order the macro generates them.
pub const CASES: &[&str] = &[
    "put_get_head_list_delete_roundtrip",
    "put_overwrites_existing_object",
    "keys_with_spaces_and_unicode_roundtrip",
    "range_read",
    "zero_byte_object",
    "large_object_64mib_identical",
    "put_wrong_sha256_is_checksum_mismatch_and_invisible",
    "multipart_parts_out_of_order",
    "multipart_single_small_part",
    "multipart_resumed_after_reopening_backend",
    "nothing_visible_before_complete",
    "abort_is_idempotent",
    "multipart_wrong_part_sha256_rejected",
    "complete_with_wrong_whole_sha256_rejected_nothing_visible",
    "complete_with_unknown_part_rejected",
    "complete_with_undersized_middle_part_rejected",
    "upload_id_is_bound_to_its_key",
    "resend_part_replaces_it",
    "list_prefix_over_1000_keys",
    "delete_missing_key_succeeds",
    "head_and_get_missing_key_not_found",
    "list_missing_prefix_is_empty",
    "put_if_absent_creates_once",
    "put_file_stores_the_file_or_declines",
    "store_checksum_is_computed_from_the_stored_bytes",
    "part_sizes_are_consistent_and_the_preferred_size_uploads",
    "list_uploads_names_uploads_in_progress_under_the_prefix_only",
    "create_upload_for_makes_an_object_whose_recorded_hash_is_its_own",
    "versioning_of_the_test_bucket_reads_without_error",
];

/// Generate one `#[tokio::test]` per conformance case, inside a `mod conformance`.
///
/// ```ignore
/// pronto_backends::conformance_suite!(
///     harness = my_harness().await,          // any expression giving a `Harness`
///     skip = {                               // optional: cases the server cannot honour
///         range_read: "the emulator ignores Range headers",
///     },
/// );
/// ```
/// Skipped cases are still generated, marked `#[ignore = "reason"]`; a skip name that is
/// not a case is a compile error.
#[macro_export]
macro_rules! conformance_suite {
    (harness = $harness:expr $(, skip = { $($skip:ident : $reason:literal),* $(,)? })? $(,)?) => {
        $crate::conformance_suite!(@expand ($) ($harness) [$($($skip : $reason),*)?]);
    };
    (@expand ($d:tt) ($harness:expr) [$($skip:ident : $reason:literal),*]) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance as __suite;

            async fn __harness() -> __suite::Harness {
                $harness
            }

            // A typo in a skip list must not silently run (or drop) a case.
            #[allow(dead_code)]
            const _: () = { $( let _ = __suite::$skip; )* };

            macro_rules! __case {
                $(
                    ($skip) => {
                        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        #[ignore = $reason]
                        async fn $skip() {
                            __suite::$skip(&__harness().await).await;
                        }
                    };
                )*
                ($d name:ident) => {
                    #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $d name() {
                        __suite::$d name(&__harness().await).await;
                    }
                };
            }

            __case!(put_get_head_list_delete_roundtrip);
            __case!(put_overwrites_existing_object);
            __case!(keys_with_spaces_and_unicode_roundtrip);
            __case!(range_read);
            __case!(zero_byte_object);
            __case!(large_object_64mib_identical);
            __case!(put_wrong_sha256_is_checksum_mismatch_and_invisible);
            __case!(multipart_parts_out_of_order);
            __case!(multipart_single_small_part);
            __case!(multipart_resumed_after_reopening_backend);
            __case!(nothing_visible_before_complete);
            __case!(abort_is_idempotent);
            __case!(multipart_wrong_part_sha256_rejected);
            __case!(complete_with_wrong_whole_sha256_rejected_nothing_visible);
            __case!(complete_with_unknown_part_rejected);
            __case!(complete_with_undersized_middle_part_rejected);
            __case!(upload_id_is_bound_to_its_key);
            __case!(resend_part_replaces_it);
            __case!(list_prefix_over_1000_keys);
            __case!(delete_missing_key_succeeds);
            __case!(head_and_get_missing_key_not_found);
            __case!(list_missing_prefix_is_empty);
            __case!(put_if_absent_creates_once);
            __case!(put_file_stores_the_file_or_declines);
            __case!(store_checksum_is_computed_from_the_stored_bytes);
            __case!(part_sizes_are_consistent_and_the_preferred_size_uploads);
            __case!(list_uploads_names_uploads_in_progress_under_the_prefix_only);
            __case!(create_upload_for_makes_an_object_whose_recorded_hash_is_its_own);
            __case!(versioning_of_the_test_bucket_reads_without_error);
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh random prefix `t-<16 hex>/` for one case.
pub fn unique_prefix() -> String {
    format!("t-{}/", random_hex(8))
}

fn random_hex(n_bytes: usize) -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut seed = Vec::with_capacity(32);
    for i in 0..4u8 {
        let h = RandomState::new().hash_one((
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now(),
            std::process::id(),
            i,
        ));
        seed.extend_from_slice(&h.to_le_bytes());
    }
    hex::encode(&sha256_of(&seed)[..n_bytes.min(32)])
}

/// `len` deterministic pseudo-random bytes (xorshift), different for each `seed`.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    if x == 0 {
        x = 1;
    }
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

/// A part size the backend accepts: `wanted`, raised to the minimum and capped at the maximum.
fn part_size(caps: &Capabilities, wanted: u64) -> u64 {
    wanted
        .max(caps.min_part_size)
        .min(caps.max_part_size)
        .max(1)
}

/// Split `data` into parts of `size` bytes (the last one shorter), numbered from 1.
fn split_parts(data: &Bytes, size: u64) -> Vec<(u32, Bytes)> {
    let size = size as usize;
    (0..data.len().div_ceil(size))
        .map(|i| {
            let end = ((i + 1) * size).min(data.len());
            (i as u32 + 1, data.slice(i * size..end))
        })
        .collect()
}

/// Data for a three-part upload: two full parts of `part` bytes and a shorter last one.
fn three_part_data(caps: &Capabilities, seed: u64) -> (Bytes, u64) {
    let part = part_size(caps, 256 * 1024);
    let len = 2 * part + part / 3 + 1;
    (Bytes::from(test_data(len as usize, seed)), part)
}

async fn put_ok(b: &dyn Backend, key: &str, data: &[u8]) -> ObjectMeta {
    let sha = sha256_of(data);
    let meta = b
        .put(key, Bytes::copy_from_slice(data), sha)
        .await
        .unwrap_or_else(|e| panic!("put({key}, {} bytes) failed: {e}", data.len()));
    assert_eq!(meta.key, key, "put({key}) returned meta for another key");
    assert_eq!(
        meta.size,
        data.len() as u64,
        "put({key}) returned the wrong size"
    );
    if let Some(s) = meta.sha256 {
        assert_eq!(
            s, sha,
            "put({key}) returned a sha256 that is not the body's"
        );
    }
    meta
}

async fn get_all(b: &dyn Backend, key: &str, range: Option<Range<u64>>) -> Vec<u8> {
    let what = format!("get({key}, {range:?})");
    let stream = b
        .get(key, range)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"));
    crate::collect(stream)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the stream failed: {e}"))
}

/// Assert that `got` equals `want` without dumping megabytes into the panic message.
#[track_caller]
fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: bytes differ: got {} bytes, want {} bytes, first difference at {:?}",
            got.len(),
            want.len(),
            first_diff
        );
    }
}

async fn head_ok(b: &dyn Backend, key: &str) -> ObjectMeta {
    b.head(key)
        .await
        .unwrap_or_else(|e| panic!("head({key}) failed: {e}"))
}

async fn list_keys(b: &dyn Backend, prefix: &str) -> Vec<ObjectMeta> {
    let listed = b
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list({prefix:?}) failed: {e}"));
    for w in listed.windows(2) {
        assert!(
            w[0].key < w[1].key,
            "list({prefix:?}) is not sorted and unique: {:?} before {:?}",
            w[0].key,
            w[1].key
        );
    }
    for m in &listed {
        assert!(
            m.key.starts_with(prefix),
            "list({prefix:?}) returned {:?}, which does not start with the prefix",
            m.key
        );
    }
    listed
}

fn keys(listed: &[ObjectMeta]) -> Vec<&str> {
    listed.iter().map(|m| m.key.as_str()).collect()
}

/// `key` must not be visible in any way: head and get say NotFound, list under
/// `prefix` does not show it.
async fn assert_absent(b: &dyn Backend, key: &str, prefix: &str, when: &str) {
    match b.head(key).await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("{when}: head({key}) should be NotFound, got {other:?}"),
    }
    match b.get(key, None).await {
        Err(BackendError::NotFound(_)) => {}
        Err(e) => panic!("{when}: get({key}) should be NotFound, got {e:?}"),
        Ok(_) => panic!("{when}: get({key}) should be NotFound, but it returned a stream"),
    }
    let listed = list_keys(b, prefix).await;
    assert!(
        !listed.iter().any(|m| m.key == key),
        "{when}: list({prefix:?}) shows {key}: {:?}",
        keys(&listed)
    );
}

/// `key` must hold exactly `data`: head size, full get, listing.
async fn assert_object(b: &dyn Backend, key: &str, data: &[u8], when: &str) {
    let meta = head_ok(b, key).await;
    assert_eq!(meta.key, key, "{when}: head({key}) returned another key");
    assert_eq!(
        meta.size,
        data.len() as u64,
        "{when}: head({key}) has the wrong size"
    );
    if let Some(s) = meta.sha256 {
        assert_eq!(
            s,
            sha256_of(data),
            "{when}: head({key}) reports a sha256 that is not the content's"
        );
    }
    assert_bytes_eq(
        &get_all(b, key, None).await,
        data,
        &format!("{when}: get({key})"),
    );
}

fn expect_checksum_mismatch<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
    match r {
        Err(BackendError::ChecksumMismatch { .. }) => {}
        other => panic!("{what}: expected ChecksumMismatch, got {other:?}"),
    }
}

fn expect_upload_not_found<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
    match r {
        Err(BackendError::UploadNotFound(_)) => {}
        other => panic!("{what}: expected UploadNotFound, got {other:?}"),
    }
}

async fn create_ok(b: &dyn Backend, key: &str) -> UploadId {
    b.create_upload(key)
        .await
        .unwrap_or_else(|e| panic!("create_upload({key}) failed: {e}"))
}

async fn part_ok(b: &dyn Backend, key: &str, up: &UploadId, n: u32, body: &Bytes) -> PartReceipt {
    let r = b
        .put_part(key, up, n, body.clone(), sha256_of(body))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "put_part({key}, part {n}, {} bytes) failed: {e}",
                body.len()
            )
        });
    assert_eq!(
        r.number, n,
        "put_part({key}, {n}) receipt has the wrong number"
    );
    assert_eq!(
        r.size,
        body.len() as u64,
        "put_part({key}, {n}) receipt has the wrong size"
    );
    r
}

async fn complete_ok(
    b: &dyn Backend,
    key: &str,
    up: &UploadId,
    receipts: &[PartReceipt],
    data: &[u8],
) -> ObjectMeta {
    let meta = b
        .complete_upload(key, up, receipts, sha256_of(data))
        .await
        .unwrap_or_else(|e| panic!("complete_upload({key}) failed: {e}"));
    assert_eq!(meta.key, key, "complete_upload({key}) returned another key");
    assert_eq!(
        meta.size,
        data.len() as u64,
        "complete_upload({key}) returned the wrong size"
    );
    if let Some(s) = meta.sha256 {
        assert_eq!(
            s,
            sha256_of(data),
            "complete_upload({key}) returned a sha256 that is not the content's"
        );
    }
    meta
}

/// Upload `data` in parts of `size`, `concurrency` at a time; receipts in part order.
async fn upload_all_parts(
    b: &dyn Backend,
    key: &str,
    up: &UploadId,
    data: &Bytes,
    size: u64,
    concurrency: usize,
) -> Vec<PartReceipt> {
    let mut receipts: Vec<PartReceipt> = futures::stream::iter(split_parts(data, size))
        .map(|(n, body)| async move { part_ok(b, key, up, n, &body).await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    receipts.sort_by_key(|r| r.number);
    receipts
}

async fn delete_ok(b: &dyn Backend, key: &str) {
    b.delete(key)
        .await
        .unwrap_or_else(|e| panic!("delete({key}) failed: {e}"));
}

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// put → head → get → list → delete, with nested keys.
pub async fn put_get_head_list_delete_roundtrip(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k1 = format!("{p}a.bin");
    let k2 = format!("{p}dir/sub/b.tar.gz");
    let k3 = format!("{p}dir/c.manifest.json");
    let d1 = test_data(1000, 1);
    let d2 = test_data(70_001, 2);
    let d3 = br#"{"id":"20250101-000000"}"#.to_vec();

    assert!(
        list_keys(b, &p).await.is_empty(),
        "a fresh prefix is not empty"
    );
    let before = std::time::SystemTime::now();
    put_ok(b, &k1, &d1).await;
    assert_object(b, &k1, &d1, "after put").await;
    // `head` says when the store wrote it, by the store's clock (here on this host, so
    // within a few minutes of ours; stores round to the second).
    let written = head_ok(b, &k1)
        .await
        .modified
        .unwrap_or_else(|| panic!("head({k1}) reports no modification time"));
    let skew = match written.duration_since(before) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        skew < std::time::Duration::from_secs(300),
        "head({k1}).modified is {skew:?} away from the time of the put"
    );
    put_ok(b, &k2, &d2).await;
    put_ok(b, &k3, &d3).await;

    let listed = list_keys(b, &p).await;
    let mut want = vec![k1.as_str(), k2.as_str(), k3.as_str()];
    want.sort();
    assert_eq!(keys(&listed), want, "list({p}) after three puts");
    for m in &listed {
        let data: &[u8] = if m.key == k1 {
            &d1
        } else if m.key == k2 {
            &d2
        } else {
            &d3
        };
        assert_eq!(m.size, data.len() as u64, "list size of {}", m.key);
        if let Some(s) = m.sha256 {
            assert_eq!(s, sha256_of(data), "list sha256 of {}", m.key);
        }
    }
    let sub = format!("{p}dir/");
    let mut want_sub = vec![k2.as_str(), k3.as_str()];
    want_sub.sort();
    assert_eq!(keys(&list_keys(b, &sub).await), want_sub, "list({sub})");

    delete_ok(b, &k1).await;
    assert_absent(b, &k1, &p, "after delete").await;
    assert_eq!(
        keys(&list_keys(b, &p).await),
        want_sub,
        "list({p}) after deleting {k1}"
    );
    assert_object(b, &k2, &d2, "a sibling after delete").await;
    delete_ok(b, &k2).await;
    delete_ok(b, &k3).await;
    assert!(
        list_keys(b, &p).await.is_empty(),
        "list({p}) after deleting everything"
    );
}

/// A second put replaces the object, with a different size.
pub async fn put_overwrites_existing_object(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}obj");
    let old = test_data(5000, 3);
    let new = test_data(1234, 4);
    put_ok(b, &k, &old).await;
    put_ok(b, &k, &new).await;
    assert_object(b, &k, &new, "after overwrite").await;
    assert_eq!(keys(&list_keys(b, &p).await), vec![k.as_str()]);
    put_ok(b, &k, &old).await;
    assert_object(b, &k, &old, "after overwriting back").await;
    delete_ok(b, &k).await;
    assert_absent(b, &k, &p, "after delete").await;
}

/// Keys with spaces, `+`, `%`, `=`, `&` and non-ASCII characters survive every operation.
pub async fn keys_with_spaces_and_unicode_roundtrip(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let names = [
        "with space/file name.tar.gz",
        "plus+percent%20equals=amp&.bin",
        "ünïcødé/日本語.txt",
        "pronto-app-backup-20250101-000000.tar.gz.manifest.json",
    ];
    let mut want = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let k = format!("{p}{name}");
        let d = test_data(100 + i, 10 + i as u64);
        put_ok(b, &k, &d).await;
        assert_object(b, &k, &d, "special key").await;
        want.push(k);
    }
    want.sort();
    let listed = list_keys(b, &p).await;
    assert_eq!(
        keys(&listed),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for k in &want {
        delete_ok(b, k).await;
        assert_absent(b, k, &p, "special key after delete").await;
    }
}

/// Byte ranges: start, middle, end, across read-chunk boundaries, clamped past the end.
pub async fn range_read(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}ranged");
    let size: u64 = 2 * 1024 * 1024 + 500_007;
    let data = test_data(size as usize, 5);
    put_ok(b, &k, &data).await;
    let ranges = [
        0..1,
        0..size,
        1..2,
        123..4567,
        1_000_000..2_200_000,
        size - 1..size,
        size / 2..size,
    ];
    for r in ranges {
        let got = get_all(b, &k, Some(r.clone())).await;
        let want = &data[r.start as usize..r.end as usize];
        assert_bytes_eq(&got, want, &format!("get({k}, {r:?})"));
    }
    // A range running past the end is clamped to the object.
    let got = get_all(b, &k, Some(size - 10..size + 1000)).await;
    assert_bytes_eq(
        &got,
        &data[(size - 10) as usize..],
        "a range past the end should be clamped",
    );
    // A range starting beyond the end is an error (at the call or while reading).
    let beyond = match b.get(&k, Some(size + 10..size + 20)).await {
        Err(_) => true,
        Ok(s) => crate::collect(s).await.is_err(),
    };
    assert!(
        beyond,
        "get({k}) of a range starting beyond the end should fail"
    );
    assert_bytes_eq(&get_all(b, &k, None).await, &data, "full get after ranges");
    delete_ok(b, &k).await;
}

/// An empty object is an object: listed with size 0, readable, deletable.
pub async fn zero_byte_object(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}empty");
    let meta = put_ok(b, &k, &[]).await;
    assert_eq!(meta.size, 0);
    assert_object(b, &k, &[], "empty object").await;
    let listed = list_keys(b, &p).await;
    assert_eq!(
        keys(&listed),
        vec![k.as_str()],
        "list shows the empty object"
    );
    assert_eq!(listed[0].size, 0, "listed size of the empty object");
    delete_ok(b, &k).await;
    assert_absent(b, &k, &p, "empty object after delete").await;
}

/// 64 MiB through `put` and through a multipart upload both read back identical.
pub async fn large_object_64mib_identical(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let size = 64 * 1024 * 1024usize;
    let data = Bytes::from(test_data(size, 6));
    let sha = sha256_of(&data);

    async fn check_streamed(b: &dyn Backend, key: &str, size: usize, sha: [u8; 32]) {
        use sha2::Digest;
        let mut stream = b
            .get(key, None)
            .await
            .unwrap_or_else(|e| panic!("get({key}) failed: {e}"));
        let mut hasher = sha2::Sha256::new();
        let mut n = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap_or_else(|e| panic!("reading {key} failed: {e}"));
            n += chunk.len();
            hasher.update(&chunk);
        }
        assert_eq!(n, size, "{key}: read back the wrong number of bytes");
        let got: [u8; 32] = hasher.finalize().into();
        assert_eq!(
            got, sha,
            "{key}: read back different bytes (sha256 differs)"
        );
        assert_eq!(head_ok(b, key).await.size, size as u64, "{key}: head size");
    }

    let k1 = format!("{p}put-64mib");
    let meta = b
        .put(&k1, data.clone(), sha)
        .await
        .unwrap_or_else(|e| panic!("put({k1}, 64 MiB) failed: {e}"));
    assert_eq!(meta.size, size as u64);
    check_streamed(b, &k1, size, sha).await;

    let k2 = format!("{p}multipart-64mib");
    let caps = b.capabilities();
    let psize = part_size(&caps, 15 * 1024 * 1024);
    let up = create_ok(b, &k2).await;
    let receipts = upload_all_parts(b, &k2, &up, &data, psize, 4).await;
    complete_ok(b, &k2, &up, &receipts, &data).await;
    check_streamed(b, &k2, size, sha).await;
    // A range across a part boundary of the assembled object.
    let r = psize - 1000..psize + 1000;
    if r.end <= size as u64 {
        let got = get_all(b, &k2, Some(r.clone())).await;
        assert_bytes_eq(
            &got,
            &data[r.start as usize..r.end as usize],
            "range across a part boundary",
        );
    }
    delete_ok(b, &k1).await;
    delete_ok(b, &k2).await;
    assert!(list_keys(b, &p).await.is_empty());
}

/// A put whose body does not match its sha256 fails with ChecksumMismatch and stores
/// nothing; over an existing object, the old content stays.
pub async fn put_wrong_sha256_is_checksum_mismatch_and_invisible(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}bad");
    let data = test_data(10_000, 7);
    let mut flipped = data.clone();
    flipped[5000] ^= 1;
    expect_checksum_mismatch(
        b.put(&k, Bytes::from(flipped), sha256_of(&data)).await,
        "put with a body that does not match its sha256",
    );
    assert_absent(b, &k, &p, "after a put with a wrong sha256").await;

    let old = test_data(3000, 8);
    put_ok(b, &k, &old).await;
    expect_checksum_mismatch(
        b.put(&k, Bytes::from(data.clone()), sha256_of(b"something else"))
            .await,
        "overwriting put with a wrong sha256",
    );
    assert_object(b, &k, &old, "after a failed overwrite").await;
    assert_eq!(
        keys(&list_keys(b, &p).await),
        vec![k.as_str()],
        "after a failed overwrite only the old object is listed"
    );
    delete_ok(b, &k).await;
}

/// `put_file` either declines (`None`: the caller uploads otherwise) or stores the file
/// exactly, telling `on_bytes` of every byte; a file that does not hash to the given
/// SHA-256 leaves nothing, and an old object under the key stays as it was.
pub async fn put_file_stores_the_file_or_declines(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}file.tar.gz");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = test_data(9 * 1024 * 1024 + 17, 21);
    let src = dir.path().join("src");
    std::fs::write(&src, &data).expect("write source");
    let counted = Arc::new(AtomicU64::new(0));
    let c = counted.clone();
    let on_bytes: crate::OnBytes = Arc::new(move |n| {
        c.fetch_add(n, Ordering::Relaxed);
    });
    let r = b.put_file(&k, &src, sha256_of(&data), on_bytes).await;
    let meta = match r {
        Ok(None) => {
            assert_absent(b, &k, &p, "after a declined put_file").await;
            return;
        }
        Ok(Some(meta)) => meta,
        Err(e) => panic!("put_file of a good file failed: {e}"),
    };
    assert_eq!(meta.size, data.len() as u64, "put_file reports the size");
    assert_eq!(
        counted.load(Ordering::Relaxed),
        data.len() as u64,
        "on_bytes saw every byte"
    );
    assert_object(b, &k, &data, "after put_file").await;

    // The source changed under the caller: nothing replaces the stored object.
    let other = test_data(5000, 22);
    std::fs::write(&src, &other).expect("rewrite source");
    expect_checksum_mismatch(
        b.put_file(&k, &src, sha256_of(&data), Arc::new(|_| {}))
            .await,
        "put_file of a file that does not hash to the given sha256",
    );
    assert_object(b, &k, &data, "after a put_file with a wrong sha256").await;
    assert_eq!(
        keys(&list_keys(b, &p).await),
        vec![k.as_str()],
        "after a failed put_file only the old object is listed"
    );
    let uploads = b.list_uploads(&p).await.expect("list uploads");
    assert!(
        uploads.unwrap_or_default().is_empty(),
        "a failed put_file left something behind"
    );
    delete_ok(b, &k).await;
}

/// Parts sent last-first assemble in part order.
pub async fn multipart_parts_out_of_order(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}ooo.bin");
    let (data, psize) = three_part_data(&b.capabilities(), 9);
    let parts = split_parts(&data, psize);
    assert_eq!(parts.len(), 3);
    let up = create_ok(b, &k).await;
    let mut receipts = Vec::new();
    for (n, body) in parts.iter().rev() {
        receipts.push(part_ok(b, &k, &up, *n, body).await);
    }
    receipts.sort_by_key(|r| r.number);
    complete_ok(b, &k, &up, &receipts, &data).await;
    assert_object(b, &k, &data, "after out-of-order upload").await;
    assert_eq!(keys(&list_keys(b, &p).await), vec![k.as_str()]);
    delete_ok(b, &k).await;
}

/// [`Backend::store_checksum`]: `None` (the store keeps none), or exactly the checksum
/// of the bytes stored — whole-object for a `put`, the composite of the part digests
/// for a multipart upload, or a CRC32C of the whole object either way — and a missing
/// key is `NotFound` or `None`. A backend whose recorded SHA-256 counts as proof
/// ([`Backend::sha256_is_computed_from_stored_bytes`]) reports the stored bytes' own.
pub async fn store_checksum_is_computed_from_the_stored_bytes(h: &Harness) {
    use sha2::Digest as _;
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let one = format!("{p}one.bin");
    let body = Bytes::from(test_data(70_000, 31));
    put_ok(b, &one, &body).await;
    let crc32c = |d: &[u8]| {
        crate::StoreChecksum::Crc32c(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, d) as u32
        )
    };
    match b.store_checksum(&one).await {
        Ok(None) => {}
        Ok(Some(c @ crate::StoreChecksum::Crc32c(_))) => {
            assert_eq!(c, crc32c(&body), "the store's crc32c of a put")
        }
        Ok(Some(c)) => assert_eq!(
            c,
            crate::StoreChecksum::Sha256(sha256_of(&body)),
            "the store's checksum of a put"
        ),
        Err(e) => panic!("store_checksum of a stored object: {e}"),
    }
    let multi = format!("{p}multi.bin");
    let (data, psize) = three_part_data(&b.capabilities(), 32);
    let parts = split_parts(&data, psize);
    let up = create_ok(b, &multi).await;
    let mut receipts = Vec::new();
    let mut digests = sha2::Sha256::new();
    for (n, part) in &parts {
        receipts.push(part_ok(b, &multi, &up, *n, part).await);
        digests.update(sha256_of(part));
    }
    complete_ok(b, &multi, &up, &receipts, &data).await;
    match b.store_checksum(&multi).await {
        Ok(None) => {}
        Ok(Some(crate::StoreChecksum::Sha256OfParts { digest, parts: n })) => {
            assert_eq!(n as usize, parts.len(), "parts in the composite checksum");
            assert_eq!(
                digest,
                <[u8; 32]>::from(digests.finalize()),
                "composite digest"
            );
        }
        Ok(Some(c @ crate::StoreChecksum::Crc32c(_))) => {
            assert_eq!(c, crc32c(&data), "the store's crc32c of a multipart object")
        }
        Ok(Some(c)) => assert_eq!(
            c,
            crate::StoreChecksum::Sha256(sha256_of(&data)),
            "the store's checksum of a multipart object"
        ),
        Err(e) => panic!("store_checksum of a multipart object: {e}"),
    }
    // A backend that says its recorded SHA-256 is computed from the stored bytes reports
    // exactly theirs (or none, where it could not record one).
    if b.sha256_is_computed_from_stored_bytes() {
        for (key, bytes) in [(&one, &body[..]), (&multi, &data[..])] {
            let meta = b.head(key).await.expect("head of a stored object");
            if let Some(h) = meta.sha256 {
                assert_eq!(h, sha256_of(bytes), "{key}: the sha256 head reports");
            }
        }
    }
    match b.store_checksum(&format!("{p}missing")).await {
        Ok(None) | Err(BackendError::NotFound(_)) => {}
        other => panic!("store_checksum of a missing key: {other:?}"),
    }
    delete_ok(b, &one).await;
    delete_ok(b, &multi).await;
}

/// A one-part upload smaller than the minimum part size (the last part may be short).
pub async fn multipart_single_small_part(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}small");
    let data = Bytes::from(test_data(1000, 10));
    let up = create_ok(b, &k).await;
    let r = part_ok(b, &k, &up, 1, &data).await;
    complete_ok(b, &k, &up, &[r], &data).await;
    assert_object(b, &k, &data, "after a one-part upload").await;
    delete_ok(b, &k).await;
}

/// The part sizes a backend states are consistent (what the engine plans with), and an
/// upload in parts of its preferred size, with a shorter last part, reads back identical.
pub async fn part_sizes_are_consistent_and_the_preferred_size_uploads(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let caps = b.capabilities();
    assert!(caps.min_part_size >= 1, "{caps:?}");
    assert!(
        caps.min_part_size <= caps.preferred_part_size
            && caps.preferred_part_size <= caps.max_part_size,
        "the preferred part size must lie between the minimum and the maximum: {caps:?}"
    );
    assert!(caps.max_parts >= 1, "{caps:?}");
    let p = unique_prefix();
    let k = format!("{p}preferred");
    let psize = caps.preferred_part_size;
    let data = Bytes::from(test_data((2 * psize + psize / 3) as usize, 17));
    let up = create_ok(b, &k).await;
    let receipts = upload_all_parts(b, &k, &up, &data, psize, 3).await;
    assert_eq!(receipts.len(), 3);
    complete_ok(b, &k, &up, &receipts, &data).await;
    assert_object(
        b,
        &k,
        &data,
        "after an upload in parts of the preferred size",
    )
    .await;
    delete_ok(b, &k).await;
}

/// `list_uploads` names each upload in progress under the prefix with its id, nothing
/// outside the prefix, and forgets an upload once it is completed or aborted. A backend
/// that cannot list uploads says so with `None` (then `push --cleanup` relies on its
/// journals alone).
pub async fn list_uploads_names_uploads_in_progress_under_the_prefix_only(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let other = unique_prefix();
    let (ka, kb, ko) = (format!("{p}a"), format!("{p}b"), format!("{other}o"));
    let (ua, ub, uo) = (
        create_ok(b, &ka).await,
        create_ok(b, &kb).await,
        create_ok(b, &ko).await,
    );
    let listed = b.list_uploads(&p).await.expect("list_uploads");
    if let Some(mut listed) = listed {
        listed.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            listed,
            vec![(ka.clone(), ua.clone()), (kb.clone(), ub.clone())],
            "list_uploads({p}) must name exactly the two uploads started under it"
        );
        let data = Bytes::from(test_data(1000, 18));
        let r = part_ok(b, &ka, &ua, 1, &data).await;
        complete_ok(b, &ka, &ua, &[r], &data).await;
        b.abort_upload(&kb, &ub).await.expect("abort_upload");
        let after = b
            .list_uploads(&p)
            .await
            .expect("list_uploads")
            .unwrap_or_default();
        assert!(
            after.is_empty(),
            "a completed and an aborted upload are still listed: {after:?}"
        );
        delete_ok(b, &ka).await;
    } else {
        b.abort_upload(&ka, &ua).await.expect("abort_upload");
        b.abort_upload(&kb, &ub).await.expect("abort_upload");
    }
    b.abort_upload(&ko, &uo).await.expect("abort_upload");
}

/// An upload started with `create_upload_for` (the whole object's hash given up front)
/// completes into the same bytes, and wherever the backend reports a recorded hash
/// (`head`), it is the object's own.
pub async fn create_upload_for_makes_an_object_whose_recorded_hash_is_its_own(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}for");
    let (data, psize) = three_part_data(&b.capabilities(), 19);
    let up = b
        .create_upload_for(&k, sha256_of(&data))
        .await
        .unwrap_or_else(|e| panic!("create_upload_for({k}) failed: {e}"));
    let receipts = upload_all_parts(b, &k, &up, &data, psize, 3).await;
    complete_ok(b, &k, &up, &receipts, &data).await;
    assert_object(b, &k, &data, "after create_upload_for").await;
    let meta = head_ok(b, &k).await;
    if let Some(s) = meta.sha256 {
        assert_eq!(
            s,
            sha256_of(&data),
            "head({k}) reports a hash that is not the object's"
        );
    }
    delete_ok(b, &k).await;
}

/// `versioning` answers for the store the suite runs against: `None` (never turned on, or
/// the store has no versioning) or the status it reads; never an error.
pub async fn versioning_of_the_test_bucket_reads_without_error(h: &Harness) {
    let b = h.backend().await;
    match b.versioning().await {
        Ok(None) => {}
        Ok(Some(v)) => assert!(!v.status.is_empty(), "versioning with no status: {v:?}"),
        Err(e) => panic!("versioning() failed: {e}"),
    }
}

/// An upload id and receipts saved as JSON are completed by a new backend instance.
pub async fn multipart_resumed_after_reopening_backend(h: &Harness) {
    let p = unique_prefix();
    let k = format!("{p}resumed.tar.gz");
    let (data, psize) = {
        let a = h.backend().await;
        three_part_data(&a.capabilities(), 11)
    };
    let parts = split_parts(&data, psize);
    let journal = {
        let a = h.backend().await;
        let a = a.as_ref();
        let up = create_ok(a, &k).await;
        let r1 = part_ok(a, &k, &up, 1, &parts[0].1).await;
        let r3 = part_ok(a, &k, &up, 3, &parts[2].1).await;
        serde_json::to_string(&(up, vec![r1, r3])).expect("journal encodes")
        // `a` is dropped here, as in a killed process.
    };
    let b = h.backend().await;
    let b = b.as_ref();
    let (up, mut receipts): (UploadId, Vec<PartReceipt>) =
        serde_json::from_str(&journal).expect("journal decodes");
    assert_absent(b, &k, &p, "while resuming").await;
    receipts.push(part_ok(b, &k, &up, 2, &parts[1].1).await);
    receipts.sort_by_key(|r| r.number);
    complete_ok(b, &k, &up, &receipts, &data).await;
    assert_object(b, &k, &data, "after resuming with a new instance").await;
    let c = h.backend().await;
    assert_object(c.as_ref(), &k, &data, "seen by a third instance").await;
    delete_ok(b, &k).await;
}

/// During an upload neither head, get nor list shows the key; after complete they do.
pub async fn nothing_visible_before_complete(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}pending");
    let other = format!("{p}other-pending");
    let (data, psize) = three_part_data(&b.capabilities(), 12);
    let up = create_ok(b, &k).await;
    assert_absent(b, &k, &p, "after create_upload").await;
    assert!(
        list_keys(b, &p).await.is_empty(),
        "list shows something for an upload"
    );
    let up2 = create_ok(b, &other).await;
    part_ok(b, &other, &up2, 1, &data.slice(..100)).await;
    let receipts = upload_all_parts(b, &k, &up, &data, psize, 3).await;
    assert_absent(b, &k, &p, "after every part, before complete").await;
    assert_absent(b, &other, &p, "another upload in progress").await;
    assert!(
        list_keys(b, &p).await.is_empty(),
        "list shows in-progress uploads"
    );
    complete_ok(b, &k, &up, &receipts, &data).await;
    assert_object(b, &k, &data, "after complete").await;
    assert_eq!(
        keys(&list_keys(b, &p).await),
        vec![k.as_str()],
        "only the completed upload is listed"
    );
    assert_absent(b, &other, &p, "the other upload is still in progress").await;
    b.abort_upload(&other, &up2)
        .await
        .unwrap_or_else(|e| panic!("abort_upload({other}) failed: {e}"));
    assert_absent(b, &other, &p, "after abort").await;
    delete_ok(b, &k).await;
}

/// Aborting twice succeeds; an aborted upload takes no parts and cannot complete.
pub async fn abort_is_idempotent(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}aborted");
    let body = Bytes::from(test_data(1000, 13));
    let up = create_ok(b, &k).await;
    let r = part_ok(b, &k, &up, 1, &body).await;
    for i in 1..=3 {
        b.abort_upload(&k, &up)
            .await
            .unwrap_or_else(|e| panic!("abort_upload #{i} failed: {e}"));
    }
    assert_absent(b, &k, &p, "after abort").await;
    expect_upload_not_found(
        b.put_part(&k, &up, 2, body.clone(), sha256_of(&body)).await,
        "put_part after abort",
    );
    expect_upload_not_found(
        b.complete_upload(&k, &up, &[r], sha256_of(&body)).await,
        "complete_upload after abort",
    );
    assert_absent(b, &k, &p, "after the failed complete").await;
    let b2 = h.backend().await;
    b2.abort_upload(&k, &up)
        .await
        .unwrap_or_else(|e| panic!("abort_upload from a new instance failed: {e}"));
}

/// A part whose body does not match its sha256 is rejected and leaves no trace.
pub async fn multipart_wrong_part_sha256_rejected(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}badpart");
    let (data, psize) = three_part_data(&b.capabilities(), 14);
    let parts = split_parts(&data, psize);
    let up = create_ok(b, &k).await;
    let mut corrupt = parts[0].1.to_vec();
    corrupt[0] ^= 0xff;
    expect_checksum_mismatch(
        b.put_part(&k, &up, 1, Bytes::from(corrupt), sha256_of(&parts[0].1))
            .await,
        "put_part with a corrupted body",
    );
    expect_checksum_mismatch(
        b.put_part(&k, &up, 2, parts[1].1.clone(), [0u8; 32]).await,
        "put_part with a wrong sha256",
    );
    assert_absent(b, &k, &p, "after rejected parts").await;
    let mut receipts = Vec::new();
    for (n, body) in &parts {
        receipts.push(part_ok(b, &k, &up, *n, body).await);
    }
    complete_ok(b, &k, &up, &receipts, &data).await;
    assert_object(b, &k, &data, "rejected parts left no trace").await;
    delete_ok(b, &k).await;
}

/// complete_upload with a wrong whole-object sha256 fails with ChecksumMismatch and
/// makes nothing visible.
pub async fn complete_with_wrong_whole_sha256_rejected_nothing_visible(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}badwhole");
    let (data, psize) = three_part_data(&b.capabilities(), 15);
    let up = create_ok(b, &k).await;
    let receipts = upload_all_parts(b, &k, &up, &data, psize, 3).await;
    let mut wrong = sha256_of(&data);
    wrong[31] ^= 1;
    expect_checksum_mismatch(
        b.complete_upload(&k, &up, &receipts, wrong).await,
        "complete_upload with a wrong whole-object sha256",
    );
    assert_absent(b, &k, &p, "after a rejected complete").await;
    b.abort_upload(&k, &up)
        .await
        .unwrap_or_else(|e| panic!("abort after a rejected complete failed: {e}"));
    assert_absent(b, &k, &p, "after abort").await;
}

/// A receipt for a part that was never stored makes complete fail; nothing is visible.
pub async fn complete_with_unknown_part_rejected(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}unknownpart");
    let (data, psize) = three_part_data(&b.capabilities(), 16);
    let parts = split_parts(&data, psize);
    let up = create_ok(b, &k).await;
    let r1 = part_ok(b, &k, &up, 1, &parts[0].1).await;
    let r3 = part_ok(b, &k, &up, 3, &parts[2].1).await;
    // Part 2 was never sent; its receipt is forged from part 1's.
    let forged = PartReceipt {
        number: 2,
        size: parts[1].1.len() as u64,
        token: r1.token.clone(),
    };
    let r = b
        .complete_upload(&k, &up, &[r1, forged, r3], sha256_of(&data))
        .await;
    assert!(
        r.is_err(),
        "complete_upload with a part that was never stored succeeded: {r:?}"
    );
    assert_absent(b, &k, &p, "after a rejected complete").await;
    b.abort_upload(&k, &up)
        .await
        .unwrap_or_else(|e| panic!("abort failed: {e}"));
}

/// A part below the minimum size anywhere but last makes complete fail.
pub async fn complete_with_undersized_middle_part_rejected(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let min = b.capabilities().min_part_size;
    if min <= 1 {
        eprintln!("no minimum part size: nothing to check");
        return;
    }
    let p = unique_prefix();
    let k = format!("{p}undersized");
    let data = Bytes::from(test_data(min as usize - 1 + 10, 17));
    let small = data.slice(..min as usize - 1);
    let last = data.slice(min as usize - 1..);
    let up = create_ok(b, &k).await;
    let r1 = part_ok(b, &k, &up, 1, &small).await;
    let r2 = part_ok(b, &k, &up, 2, &last).await;
    let r = b
        .complete_upload(&k, &up, &[r1, r2], sha256_of(&data))
        .await;
    assert!(
        r.is_err(),
        "complete_upload with a {}-byte first part (minimum {min}) succeeded: {r:?}",
        min - 1
    );
    assert_absent(b, &k, &p, "after a rejected complete").await;
    b.abort_upload(&k, &up)
        .await
        .unwrap_or_else(|e| panic!("abort failed: {e}"));
}

/// An upload id cannot be used to write or complete another key.
pub async fn upload_id_is_bound_to_its_key(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}mine");
    let other = format!("{p}theirs");
    let body = Bytes::from(test_data(1000, 18));
    let up = create_ok(b, &k).await;
    let r = part_ok(b, &k, &up, 1, &body).await;
    expect_upload_not_found(
        b.put_part(&other, &up, 2, body.clone(), sha256_of(&body))
            .await,
        "put_part with another key's upload id",
    );
    expect_upload_not_found(
        b.complete_upload(&other, &up, std::slice::from_ref(&r), sha256_of(&body))
            .await,
        "complete_upload with another key's upload id",
    );
    assert_absent(b, &other, &p, "after misuse of an upload id").await;
    assert_absent(b, &k, &p, "after misuse of an upload id").await;
    complete_ok(b, &k, &up, &[r], &body).await;
    assert_object(b, &k, &body, "the upload still completes for its own key").await;
    delete_ok(b, &k).await;
}

/// Re-sending a part replaces it; the stale receipt no longer completes the upload.
pub async fn resend_part_replaces_it(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let k = format!("{p}resent");
    let psize = part_size(&b.capabilities(), 256 * 1024) as usize;
    let x = Bytes::from(test_data(psize, 19));
    let y = Bytes::from(test_data(psize, 20));
    let last_short = Bytes::from(test_data(10, 21));
    let last_long = Bytes::from(test_data(20, 22));
    let up = create_ok(b, &k).await;
    let r1x = part_ok(b, &k, &up, 1, &x).await;
    let _r2short = part_ok(b, &k, &up, 2, &last_short).await;
    let r1y = part_ok(b, &k, &up, 1, &y).await;
    let r2long = part_ok(b, &k, &up, 2, &last_long).await;

    let stale = [x.as_ref(), last_long.as_ref()].concat();
    let r = b
        .complete_upload(&k, &up, &[r1x, r2long.clone()], sha256_of(&stale))
        .await;
    assert!(
        r.is_err(),
        "complete_upload with the receipt of a replaced part succeeded: {r:?}"
    );
    assert_absent(b, &k, &p, "after a rejected complete").await;

    let want = [y.as_ref(), last_long.as_ref()].concat();
    complete_ok(b, &k, &up, &[r1y, r2long], &want).await;
    assert_object(b, &k, &want, "after re-sent parts").await;
    delete_ok(b, &k).await;
}

/// Listing returns every one of 1,006 keys (more than one page on S3) and nothing from
/// sibling prefixes.
pub async fn list_prefix_over_1000_keys(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let many = format!("{p}many/");
    let mut inside: Vec<String> = (0..1001).map(|i| format!("{many}k-{i:04}")).collect();
    inside.extend((0..5).map(|i| format!("{many}nested/deep/n-{i}")));
    let siblings = vec![
        format!("{p}many-sibling/x"),
        format!("{p}manyx"),
        format!("{p}other/y"),
    ];
    let body_of = |k: &str| Bytes::from(k.rsplit('/').next().unwrap_or("").as_bytes().to_vec());
    let all: Vec<String> = inside.iter().chain(&siblings).cloned().collect();
    futures::stream::iter(all.iter())
        .map(|k| async move {
            let body = body_of(k);
            let sha = sha256_of(&body);
            b.put(k, body, sha)
                .await
                .map_err(|e| format!("put({k}): {e}"))
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let listed = list_keys(b, &many).await;
    let mut want = inside.clone();
    want.sort();
    let got: Vec<&str> = keys(&listed);
    if got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| a != b) {
        let missing: Vec<&String> = want.iter().filter(|k| !got.contains(&k.as_str())).collect();
        let extra: Vec<&&str> = got
            .iter()
            .filter(|k| !want.iter().any(|w| w == **k))
            .collect();
        panic!(
            "list({many}) returned {} keys, want {}; missing (first 5) {:?}, unexpected (first 5) {:?}",
            got.len(),
            want.len(),
            &missing[..missing.len().min(5)],
            &extra[..extra.len().min(5)]
        );
    }
    for m in &listed {
        assert_eq!(
            m.size,
            body_of(&m.key).len() as u64,
            "listed size of {}",
            m.key
        );
    }

    // A prefix is a string prefix, not a folder: `many` also matches the siblings that
    // start with it.
    let bare = format!("{p}many");
    let listed_bare = list_keys(b, &bare).await;
    assert_eq!(
        listed_bare.len(),
        inside.len() + 2,
        "list({bare}) should hold the {} keys plus many-sibling/x and manyx",
        inside.len()
    );
    let partial = format!("{many}k-09");
    let listed_partial = list_keys(b, &partial).await;
    assert_eq!(
        keys(&listed_partial),
        (900..1000)
            .map(|i| format!("{many}k-{i:04}"))
            .collect::<Vec<_>>(),
        "list({partial})"
    );

    futures::stream::iter(all.iter())
        .map(|k| async move { b.delete(k).await.map_err(|e| format!("delete({k}): {e}")) })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left = list_keys(b, &p).await;
    assert!(
        left.is_empty(),
        "{} keys left after deleting all, e.g. {:?}",
        left.len(),
        left.first()
    );
}

/// Deleting what is not there succeeds, also twice.
pub async fn delete_missing_key_succeeds(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    delete_ok(b, &format!("{p}never-existed")).await;
    delete_ok(b, &format!("{p}no/such/folder/x")).await;
    let k = format!("{p}once");
    put_ok(b, &k, b"once").await;
    delete_ok(b, &k).await;
    delete_ok(b, &k).await;
    assert_absent(b, &k, &p, "after two deletes").await;
}

/// head and get (also ranged) of a missing key are NotFound; a "folder" is not an object.
pub async fn head_and_get_missing_key_not_found(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    let missing = format!("{p}missing");
    assert_absent(b, &missing, &p, "never written").await;
    match b.get(&missing, Some(0..10)).await {
        Err(BackendError::NotFound(_)) => {}
        Err(e) => panic!("ranged get of a missing key should be NotFound, got {e:?}"),
        Ok(_) => panic!("ranged get of a missing key returned a stream"),
    }
    let k = format!("{p}dir/file");
    put_ok(b, &k, b"x").await;
    assert_absent(b, &format!("{p}dir"), &p, "a folder-like prefix").await;
    assert_absent(b, &format!("{p}dir/fil"), &p, "a prefix of a key").await;
    assert_absent(
        b,
        &format!("{p}dir/file/below"),
        &p,
        "a key below an object",
    )
    .await;
    delete_ok(b, &k).await;
}

/// Listing a prefix with nothing under it is an empty list, not an error.
pub async fn list_missing_prefix_is_empty(h: &Harness) {
    let b = h.backend().await;
    let b = b.as_ref();
    let p = unique_prefix();
    assert!(list_keys(b, &p).await.is_empty(), "list({p})");
    assert!(list_keys(b, &format!("{p}no/such/")).await.is_empty());
    let k = format!("{p}a/x");
    put_ok(b, &k, b"x").await;
    for empty in [
        format!("{p}b/"),
        format!("{p}a/x/"),
        format!("{p}a/y"),
        format!("{p}ab"),
    ] {
        let listed = list_keys(b, &empty).await;
        assert!(
            listed.is_empty(),
            "list({empty}) should be empty, got {:?}",
            keys(&listed)
        );
    }
    assert_eq!(
        keys(&list_keys(b, &format!("{p}a")).await),
        vec![k.as_str()]
    );
    delete_ok(b, &k).await;
}

/// `put_if_absent` (what prune leases are made of), on backends that support it: the
/// first call creates the object; a second one, with other bytes and from another
/// instance, fails with `AlreadyExists` and the first body stays; a wrong SHA-256 is
/// refused and stores nothing; after a delete it creates again. Of two creates racing
/// for one key, exactly one wins. A backend that does not support it must say so
/// (`supports_put_if_absent() == false`) and refuse, never overwrite.
pub async fn put_if_absent_creates_once(h: &Harness) {
    let b1 = h.backend().await;
    let b2 = h.backend().await;
    let (b, other) = (b1.as_ref(), b2.as_ref());
    let p = unique_prefix();
    let k = format!("{p}lock.json");
    let first = test_data(700, 41);
    let second = test_data(900, 42);
    if !b.supports_put_if_absent() {
        put_ok(b, &k, &first).await;
        let r = b
            .put_if_absent(&k, Bytes::from(second.clone()), sha256_of(&second))
            .await;
        assert!(
            r.is_err(),
            "put_if_absent on a backend without support must fail, got {r:?}"
        );
        assert_object(b, &k, &first, "after an unsupported put_if_absent").await;
        delete_ok(b, &k).await;
        return;
    }
    expect_checksum_mismatch(
        b.put_if_absent(&k, Bytes::from(first.clone()), [7u8; 32])
            .await,
        "put_if_absent with a wrong sha256",
    );
    assert_absent(b, &k, &p, "after a refused put_if_absent").await;

    let meta = b
        .put_if_absent(&k, Bytes::from(first.clone()), sha256_of(&first))
        .await
        .unwrap_or_else(|e| panic!("put_if_absent({k}) on a free key failed: {e}"));
    assert_eq!(meta.key, k, "put_if_absent returned meta for another key");
    assert_eq!(meta.size, first.len() as u64, "put_if_absent size");
    assert_object(b, &k, &first, "after put_if_absent").await;

    for (who, inst) in [("the same instance", b), ("another instance", other)] {
        match inst
            .put_if_absent(&k, Bytes::from(second.clone()), sha256_of(&second))
            .await
        {
            Err(BackendError::AlreadyExists(_)) => {}
            r => {
                panic!("a second put_if_absent({k}) from {who} should be AlreadyExists, got {r:?}")
            }
        }
        assert_object(
            other,
            &k,
            &first,
            &format!("after a refused put_if_absent from {who}"),
        )
        .await;
    }
    assert_eq!(
        keys(&list_keys(b, &p).await),
        vec![k.as_str()],
        "a refused put_if_absent must leave nothing else behind"
    );

    delete_ok(b, &k).await;
    assert_absent(b, &k, &p, "after delete").await;
    b.put_if_absent(&k, Bytes::from(second.clone()), sha256_of(&second))
        .await
        .unwrap_or_else(|e| panic!("put_if_absent({k}) after delete failed: {e}"));
    assert_object(other, &k, &second, "put_if_absent after delete").await;
    delete_ok(b, &k).await;

    // Two creates at once from two instances: exactly one wins, and its body is there.
    let race = format!("{p}race.json");
    let (r1, r2) = futures::join!(
        put_if_absent_retrying(b, &race, &first),
        put_if_absent_retrying(other, &race, &second),
    );
    let winner = match (&r1, &r2) {
        (Ok(_), Err(BackendError::AlreadyExists(_))) => &first,
        (Err(BackendError::AlreadyExists(_)), Ok(_)) => &second,
        _ => panic!("two racing put_if_absent({race}): want one Ok and one AlreadyExists, got {r1:?} and {r2:?}"),
    };
    assert_object(b, &race, winner, "after a race of two creates").await;
    delete_ok(b, &race).await;
    assert!(
        list_keys(b, &p).await.is_empty(),
        "list({p}) after deleting everything"
    );
}

/// `put_if_absent`, asked again (as the CLI's retry loop would) while it is `Transient`
/// — S3 may answer a race of conditional writes with 409 ConditionalRequestConflict.
async fn put_if_absent_retrying(
    b: &dyn Backend,
    key: &str,
    data: &[u8],
) -> crate::Result<ObjectMeta> {
    let mut tries = 0;
    loop {
        match b
            .put_if_absent(key, Bytes::copy_from_slice(data), sha256_of(data))
            .await
        {
            Err(e) if e.is_retryable() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}
