//! The object stores' conditional requests, which the Indexed Job's uploaders and monitor coordinate through (S3 as
//! the only medium): `If-None-Match` on a GET (304, nothing sent), `If-Match` on a GET (412: the object changed),
//! `If-None-Match: *` and `If-Match` on a PUT (412: nothing written). The same checks run against S3 (a real local
//! server, moto_server, which answers these conditions as S3 does) and the embedded local store.

use logcopy::publish::store::{GetCondition, GetOutcome, LocalStore, ObjectStore, PutCondition, PutOutcome, S3Store};
use testkit::moto::Moto;
use testkit::scratch::Scratch;

const MAX: u64 = 1 << 20;

async fn conditional_requests_behave_as_s3s(store: &impl ObjectStore) {
    let key = "4321/shards/worker-1.json";
    let any = GetCondition::default();
    assert_eq!(store.get_bytes(key, any, MAX).await.unwrap(), GetOutcome::Missing);
    assert_eq!(
        store.put_bytes(key, b"x".to_vec(), PutCondition::IfMatch("\"nope\"".into())).await.unwrap(),
        PutOutcome::PreconditionFailed,
        "If-Match on a missing object"
    );

    let PutOutcome::Written { etag: e1 } = store.put_bytes(key, b"one".to_vec(), PutCondition::IfAbsent).await.unwrap()
    else {
        panic!("the first conditional write failed")
    };
    assert!(!e1.is_empty());
    assert_eq!(
        store.put_bytes(key, b"two".to_vec(), PutCondition::IfAbsent).await.unwrap(),
        PutOutcome::PreconditionFailed,
        "If-None-Match: * on an existing object"
    );
    assert_eq!(
        store.get_bytes(key, any, MAX).await.unwrap(),
        GetOutcome::Found { body: b"one".to_vec(), etag: e1.clone() }
    );
    let unchanged = GetCondition { if_none_match: Some(&e1), if_match: None };
    assert_eq!(store.get_bytes(key, unchanged, MAX).await.unwrap(), GetOutcome::NotModified);

    let PutOutcome::Written { etag: e2 } =
        store.put_bytes(key, b"two!".to_vec(), PutCondition::IfMatch(e1.clone())).await.unwrap()
    else {
        panic!("If-Match on the current ETag failed")
    };
    assert_ne!(e1, e2, "a new write has a new ETag");
    assert_eq!(
        store.put_bytes(key, b"stale".to_vec(), PutCondition::IfMatch(e1.clone())).await.unwrap(),
        PutOutcome::PreconditionFailed,
        "a writer holding the old ETag cannot overwrite the new object"
    );
    assert_eq!(
        store.get_bytes(key, unchanged, MAX).await.unwrap(),
        GetOutcome::Found { body: b"two!".to_vec(), etag: e2.clone() },
        "If-None-Match with the old ETag gets the new object"
    );
    let pinned = GetCondition { if_none_match: None, if_match: Some(&e1) };
    assert_eq!(store.get_bytes(key, pinned, MAX).await.unwrap(), GetOutcome::Changed);
    let pinned = GetCondition { if_none_match: None, if_match: Some(&e2) };
    assert!(matches!(store.get_bytes(key, pinned, MAX).await.unwrap(), GetOutcome::Found { .. }));
    assert!(store.get_bytes(key, any, 3).await.is_err(), "an object over the cap is an error");

    // An unconditional write, and the ETag a file upload reports is the one a conditional write can name.
    assert!(matches!(
        store.put_bytes(key, b"3".to_vec(), PutCondition::Always).await.unwrap(),
        PutOutcome::Written { .. }
    ));
    let dir = Scratch::new("conditional-file");
    let path = dir.path("results.json");
    std::fs::write(&path, b"{\"records\": []}").unwrap();
    let stats = store.put(key, std::fs::File::open(&path).unwrap(), 15).await.unwrap();
    let etag = stats.etag.expect("an upload reports the object's ETag");
    assert!(matches!(
        store.put_bytes(key, b"4".to_vec(), PutCondition::IfMatch(etag)).await.unwrap(),
        PutOutcome::Written { .. }
    ));
}

#[tokio::test]
async fn s3_answers_conditional_requests() {
    let moto = Moto::start("conditional");
    moto.setup("conditional", "unused-table").await;
    let store = S3Store::new(&moto.sdk().await, "conditional");
    conditional_requests_behave_as_s3s(&store).await;
    let methods: Vec<(String, String)> = moto.requests();
    assert!(!methods.iter().any(|(_, u)| u.contains("list-type")), "no LIST was needed");
}

#[tokio::test]
async fn the_local_store_answers_conditional_requests_as_s3_does() {
    let dir = Scratch::new("conditional-local");
    let store = LocalStore::new(&dir.path("s3"));
    conditional_requests_behave_as_s3s(&store).await;
}

/// Two local writers racing on one key with the same old ETag: exactly one wins (the check and the write are one
/// step under the store's lock, as S3's conditional writes are).
#[tokio::test]
async fn of_two_racing_conditional_writes_one_wins() {
    let dir = Scratch::new("conditional-race");
    let root = dir.path("s3");
    let a = LocalStore::new(&root);
    let b = LocalStore::new(&root);
    let key = "k/status.json";
    let PutOutcome::Written { mut etag } = a.put_bytes(key, b"0".to_vec(), PutCondition::IfAbsent).await.unwrap()
    else {
        panic!()
    };
    for round in 0..20 {
        let (ra, rb) = tokio::join!(
            a.put_bytes(key, format!("a{round}").into_bytes(), PutCondition::IfMatch(etag.clone())),
            b.put_bytes(key, format!("b{round}").into_bytes(), PutCondition::IfMatch(etag.clone())),
        );
        let won: Vec<_> =
            [ra.unwrap(), rb.unwrap()].into_iter().filter(|o| *o != PutOutcome::PreconditionFailed).collect();
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        let PutOutcome::Written { etag: e } = &won[0] else { panic!() };
        assert_ne!(e, &etag);
        // The next round races from the winner's ETag.
        let GetOutcome::Found { etag: now, .. } = a.get_bytes(key, GetCondition::default(), MAX).await.unwrap() else {
            panic!()
        };
        assert_eq!(&now, e);
        etag = now;
    }
}
