//! The CouchDB-API server of the stack, through the invoker's own client: a database created with
//! credentials, documents with ids as OpenWhisk writes them, revisions, conflicts, bulk writes and
//! an attachment round trip (action code larger than the inline limit lives in one).

mod common;

use common::{Stack, chain, down, unique};
use openwhisk::couchdb::{CouchDb, CouchDbConfig, CouchDbError};
use serde_json::json;

fn client(stack: &Stack) -> CouchDb {
    CouchDb::new(&stack.couchdb).expect("client")
}

#[tokio::test]
async fn documents_revisions_conflicts_attachments() {
    let stack = Stack::from_env();
    let couch = client(&stack);
    let info = couch
        .server_info()
        .await
        .unwrap_or_else(|e| panic!("{}", down("couchdb", chain(&e))));
    assert!(info.is_object(), "GET / answered {info}");

    let db = unique("it-whisks");
    assert!(couch.create_db(&db).await.expect("create db"));
    assert!(
        !couch.create_db(&db).await.expect("create db again"),
        "second create must find it"
    );

    // A document whose id has a slash, as OpenWhisk's entity ids do.
    let id = "guest/hello";
    let doc =
        json!({"namespace": "guest", "name": "hello", "exec": {"kind": "nodejs:18", "code": "x"}});
    let v1 = couch.put_doc(&db, id, &doc).await.expect("put");
    assert_eq!(v1.id, id);
    let got = couch.get_doc(&db, id).await.expect("get");
    assert_eq!(got["name"], "hello");
    assert_eq!(got["_rev"], v1.rev.as_str());

    // Update with the current revision; a write with the stale one is a conflict.
    let mut doc2 = got.clone();
    doc2["exec"]["code"] = json!("y");
    let v2 = couch.put_doc(&db, id, &doc2).await.expect("update");
    assert_ne!(v1.rev, v2.rev);
    let stale = couch.put_doc(&db, id, &doc2).await.unwrap_err();
    assert!(matches!(stale, CouchDbError::Conflict { .. }), "{stale:?}");
    assert_eq!(
        couch.get_doc_rev(&db, id, &v1.rev).await.expect("old rev")["exec"]["code"],
        "x"
    );

    // A missing document is NotFound, not an outage.
    let missing = couch.get_doc(&db, "guest/nope").await.unwrap_err();
    assert!(matches!(missing, CouchDbError::NotFound { .. }) && !missing.is_unavailable());

    // Attachment round trip: 300 KiB of non-UTF-8 bytes.
    let code: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let v3 = couch
        .put_attachment(
            &db,
            id,
            &v2.rev,
            "codefile",
            "application/octet-stream",
            code.clone(),
        )
        .await
        .expect("put attachment");
    let att = couch
        .get_attachment(&db, id, "codefile")
        .await
        .expect("get attachment");
    assert_eq!(att.content_type, "application/octet-stream");
    assert_eq!(att.data, code);
    let with_stub = couch.get_doc(&db, id).await.unwrap();
    assert_eq!(with_stub["_rev"], v3.rev.as_str());
    assert_eq!(with_stub["_attachments"]["codefile"]["length"], code.len());

    // Bulk write, as activation records are written; a stale doc in the batch fails alone.
    let docs: Vec<_> = (0..20)
        .map(|i| json!({"_id": format!("guest/act{i:02}"), "n": i}))
        .chain([json!({"_id": id, "_rev": v1.rev})])
        .collect();
    let results = couch.bulk_docs(&db, &docs).await.expect("bulk");
    assert_eq!(results.len(), 21);
    assert!(
        results[..20]
            .iter()
            .all(|r| r.rev.is_some() && r.error.is_none()),
        "{results:?}"
    );
    assert_eq!(results[20].error.as_deref(), Some("conflict"));

    assert!(couch.delete_db(&db).await.expect("delete db"));
}

#[tokio::test]
async fn documents_by_id_prefix() {
    let stack = Stack::from_env();
    let couch = client(&stack);
    let db = unique("it-prefix");
    couch
        .create_db(&db)
        .await
        .unwrap_or_else(|e| panic!("{}", down("couchdb", chain(&e))));
    for id in ["guest/a", "guest/b", "guestx/c", "other/d", "guest"] {
        couch
            .put_doc(&db, id, &json!({"n": id}))
            .await
            .expect("put");
    }
    let gone = couch
        .put_doc(&db, "guest/gone", &json!({}))
        .await
        .expect("put");
    couch
        .delete_doc(&db, "guest/gone", &gone.rev)
        .await
        .expect("delete");
    let ids = |docs: Vec<serde_json::Value>| -> Vec<String> {
        docs.iter()
            .map(|d| d["_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(couch.docs_with_prefix(&db, "guest/").await.expect("prefix")),
        ["guest/a", "guest/b"],
        "only ids under guest/, deleted ones left out"
    );
    assert_eq!(couch.all_docs(&db, None, None).await.expect("all").len(), 5);
    assert!(couch.delete_db(&db).await.expect("delete db"));
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let stack = Stack::from_env();
    let bad = CouchDb::new(&CouchDbConfig {
        password: "not-the-password".into(),
        ..stack.couchdb.clone()
    })
    .unwrap();
    let err = bad.server_info().await.unwrap_err();
    assert!(matches!(err, CouchDbError::Unauthorized { .. }), "{err:?}");
}
