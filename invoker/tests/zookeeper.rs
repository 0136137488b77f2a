//! ZooKeeper id assignment (contract §1.2) against the real ZooKeeper of the stack
//! (`scripts/stack.sh up`, or `scripts/stack.sh zookeeper` for it alone): through the library,
//! and through the invoker binary started as helm starts it (`--uniqueName` and no `--id`).
//!
//! Each test works under a ZooKeeper chroot of its own (`127.0.0.1:2181/<unique>`), so the ids
//! it sees start from 0 whatever other runs assigned.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, down, unique};
use invoker::zookeeper::{self, COUNTER_PATH, MAPPING_PATH, ZooKeeperError};
use zookeeper_client as zk;

fn zookeeper_hosts() -> String {
    std::env::var("ZOOKEEPER_HOSTS").unwrap_or_else(|_| "127.0.0.1:2181".to_owned())
}

/// A connect string with a chroot of this test's own, created here, and a client in it.
async fn chroot(test: &str) -> (String, zk::Client) {
    let hosts = zookeeper_hosts();
    let client = tokio::time::timeout(Stack::COMPONENT_TIMEOUT, zk::Client::connect(&hosts))
        .await
        .unwrap_or_else(|_| panic!("{}", down("zookeeper", format!("{hosts}: timed out"))))
        .unwrap_or_else(|e| panic!("{}", down("zookeeper", format!("{hosts}: {e}"))));
    let root = format!("/h3-test-{}", unique(test));
    client
        .create(
            &root,
            &[],
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .expect("create the test's chroot");
    let chrooted = client.clone().chroot(root.as_str()).expect("chroot");
    (format!("{hosts}{root}"), chrooted)
}

/// Removes everything the test wrote: the chroot's tree, from `zk` (a client in the chroot).
async fn remove(zk: zk::Client) {
    let mut stack = vec![String::from("/")];
    let mut order = Vec::new();
    while let Some(path) = stack.pop() {
        for child in zk.list_children(&path).await.unwrap() {
            stack.push(format!("{}/{child}", path.trim_end_matches('/')));
        }
        order.push(path);
    }
    // Children before their parents; the chroot itself last, from outside it.
    for path in order.iter().rev().filter(|p| *p != "/") {
        zk.delete(path, None).await.unwrap();
    }
    let root = zk.path().to_owned();
    let outside = zk.chroot("/").expect("the root");
    outside.delete(&root, None).await.unwrap();
}

#[tokio::test]
async fn names_get_distinct_dense_ids_and_keep_them() {
    let (hosts, zk) = chroot("dense").await;
    assert_eq!(
        zookeeper::assign_id(&hosts, "node-a", None).await.unwrap(),
        0
    );
    assert_eq!(
        zookeeper::assign_id(&hosts, "node-b", None).await.unwrap(),
        1
    );
    // Restarted: the same ids again, in either order.
    assert_eq!(
        zookeeper::assign_id(&hosts, "node-b", None).await.unwrap(),
        1
    );
    assert_eq!(
        zookeeper::assign_id(&hosts, "node-a", None).await.unwrap(),
        0
    );
    assert_eq!(
        zookeeper::assign_id(&hosts, "node-c", None).await.unwrap(),
        2
    );
    // The nodes as the Scala invoker writes and reads them.
    let (data, _) = zk
        .get_data(&format!("{MAPPING_PATH}/node-c"))
        .await
        .unwrap();
    assert_eq!(data, [2], "BigInteger.toByteArray() of 2");
    let (counter, _) = zk.get_data(COUNTER_PATH).await.unwrap();
    assert_eq!(counter, 3i32.to_be_bytes(), "SharedCount: the next id");
    remove(zk).await;
}

/// A name the Scala invoker registered (its mapping written as `BigInteger.toByteArray()`,
/// here 128 = `00 80`) keeps its id.
#[tokio::test]
async fn a_mapping_written_by_the_scala_invoker_is_read() {
    let (hosts, zk) = chroot("scala").await;
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    zk.mkdir(MAPPING_PATH, &opts).await.unwrap();
    zk.create(&format!("{MAPPING_PATH}/scala-0"), &[0x00, 0x80], &opts)
        .await
        .unwrap();
    assert_eq!(
        zookeeper::assign_id(&hosts, "scala-0", None).await.unwrap(),
        128
    );
    remove(zk).await;
}

/// An invoker that has taken the counter but not yet written its mapping (the moment between
/// the Scala invoker's `trySetCount` and its `create`): a second invoker does not take the same
/// id, as the Scala invoker's own assignment would (it counts only the mappings).
#[tokio::test]
async fn an_id_claimed_in_the_counter_is_not_given_twice() {
    let (hosts, zk) = chroot("claimed").await;
    assert_eq!(zookeeper::assign_id(&hosts, "a", None).await.unwrap(), 0);
    // x claims id 1: one mapping, counter 2.
    zk.set_data(COUNTER_PATH, &2i32.to_be_bytes(), None)
        .await
        .unwrap();
    assert_eq!(zookeeper::assign_id(&hosts, "b", None).await.unwrap(), 2);
    remove(zk).await;
}

/// Invokers starting at once (a DaemonSet rolling out) never share an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_assignments_are_distinct() {
    let (hosts, zk) = chroot("concurrent").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let hosts = hosts.clone();
        tasks.spawn(async move {
            zookeeper::assign_id(&hosts, &format!("node-{i}"), None)
                .await
                .unwrap()
        });
    }
    let mut ids = tasks.join_all().await;
    ids.sort_unstable();
    assert_eq!(ids, (0..8).collect::<Vec<u32>>());
    remove(zk).await;
}

#[tokio::test]
async fn overwrite_id_moves_an_id_to_a_name() {
    let (hosts, zk) = chroot("overwrite").await;
    assert_eq!(zookeeper::assign_id(&hosts, "a", None).await.unwrap(), 0);
    assert_eq!(zookeeper::assign_id(&hosts, "b", None).await.unwrap(), 1);
    // `--uniqueName c --overwriteId 0`: a loses its mapping, c has 0.
    assert_eq!(zookeeper::assign_id(&hosts, "c", Some(0)).await.unwrap(), 0);
    assert!(
        zk.check_stat(&format!("{MAPPING_PATH}/a"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(zookeeper::assign_id(&hosts, "c", None).await.unwrap(), 0);
    // a comes back: a new id, not one in use.
    assert_eq!(zookeeper::assign_id(&hosts, "a", None).await.unwrap(), 2);
    let e = zookeeper::assign_id(&hosts, "d", Some(9))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ZooKeeperError::NotEnoughInvokers { id: 9, .. }),
        "{e}"
    );
    remove(zk).await;
}

/// An invoker binary started as helm starts it: `--uniqueName NAME` and `ZOOKEEPER_HOSTS`.
struct Invoker {
    child: std::process::Child,
    port: u16,
}

impl Invoker {
    fn start(hosts: &str, name: &str, prefix: &str) -> Self {
        let stack = Stack::from_env();
        let port = testkit::invoker::free_port();
        let couch_port = stack.couchdb.url.rsplit(':').next().unwrap().to_owned();
        let child = Command::new(env!("CARGO_BIN_EXE_invoker"))
            .args(["--uniqueName", name])
            .env("ZOOKEEPER_HOSTS", hosts)
            .env("KAFKA_HOSTS", &stack.kafka_hosts)
            .env("PORT", port.to_string())
            .env(
                "RUNTIMES_MANIFEST",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json"),
            )
            .env("CONFIG_whisk_kafka_topics_prefix", prefix)
            .env("CONFIG_whisk_couchdb_port", couch_port)
            .env("CONFIG_whisk_couchdb_username", &stack.couchdb.username)
            .env(
                "CONFIG_whisk_couchdb_password",
                stack.couchdb.password.expose(),
            )
            .env("CONFIG_whisk_invoker_vm_allowAnnotation", "false")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the invoker binary");
        Self { child, port }
    }

    /// `POST /enable` answers `invoker<N>/<name> already enabled.`: N is the assigned id.
    fn id(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the invoker exited ({status}) before it served its port");
            }
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "5", "-u", "invoker.user:invoker.pass"])
                .args(["-X", "POST"])
                .arg(format!("http://127.0.0.1:{}/enable", self.port))
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(rest) = text.strip_prefix("invoker") {
                return rest
                    .split('/')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
            }
            assert!(
                Instant::now() < deadline,
                "the invoker did not serve its port within 90 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Invoker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The acceptance line: two invokers started without `--id` get distinct ids, and a restarted
/// one gets its id again.
#[tokio::test(flavor = "multi_thread")]
async fn invokers_without_id_get_distinct_ids_and_keep_them_across_a_restart() {
    let (hosts, zk) = chroot("binary").await;
    let prefix = format!("{}-", unique("zk"));
    let (a_id, b_id) = tokio::task::spawn_blocking(move || {
        let mut a = Invoker::start(&hosts, "node-a", &prefix);
        let mut b = Invoker::start(&hosts, "node-b", &prefix);
        let (a_id, b_id) = (a.id(), b.id());
        a.stop();
        let mut again = Invoker::start(&hosts, "node-a", &prefix);
        assert_eq!(again.id(), a_id, "a restarted invoker keeps its id");
        again.stop();
        b.stop();
        (a_id, b_id)
    })
    .await
    .unwrap();
    let mut ids = [a_id, b_id];
    ids.sort_unstable();
    assert_eq!(ids, [0, 1], "distinct ids, dense from 0");
    remove(zk).await;
}
