//! ZooKeeper id assignment (contract §1.2): an invoker started with `--uniqueName` and no `--id`
//! (helm's `/init.sh --uniqueName $INVOKER_NAME`) gets its id from ZooKeeper, the same id again
//! when it restarts under the same name, and a new one for a name ZooKeeper has not seen.
//!
//! The nodes are the Scala invoker's (`InstanceIdAssigner`), so Rust and Scala invokers can share
//! one ensemble: the mapping `/invokers/idAssignment/mapping/<uniqueName>` holds the id as Java's
//! `BigInteger.toByteArray()`, and the counter `/invokers/idAssignment/counter` is Curator's
//! `SharedCount` (a 4-byte big-endian int) that serialises new assignments by its version.
//!
//! One difference, on purpose: the Scala invoker takes the number of mappings as the new id and
//! then sets the counter to that number plus one. Two invokers starting at once can both see the
//! same number of mappings (the first has set the counter but not yet created its mapping), and
//! both get the same id. Here the new id is the larger of the number of mappings and the
//! counter's value, so an invoker that loses the race to the counter sees the first one's claim
//! in the counter even before its mapping exists. Without concurrency, and with only invokers
//! of ours, the two numbers are equal and the ids are the Scala invoker's, dense from 0.
//!
//! The client asks only for what a ZooKeeper 3.4 server offers (plain creates, persistent
//! parents where Curator makes container nodes on 3.5 and later), because the helm chart deploys
//! ZooKeeper 3.4; the tests run against Debian's 3.8, not against a 3.4 server.

use std::time::Duration;

use tokio::time::Instant;
use zookeeper_client as zk;

/// The parent of the mapping nodes, one per unique name.
pub const MAPPING_PATH: &str = "/invokers/idAssignment/mapping";
/// Curator's `SharedCount` of the Scala invoker.
pub const COUNTER_PATH: &str = "/invokers/idAssignment/counter";

/// Curator's `RetryUntilElapsed(5000, 500)` of the Scala invoker: a lost connection is retried
/// every half second for 5 s.
const RETRY_FOR: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// The session timeout asked of the server; also how long one connection attempt may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ZooKeeperError {
    #[error("ZOOKEEPER_HOSTS {0:?} is not a host:port list")]
    InvalidHosts(String),
    #[error("unique name {0:?} cannot be a ZooKeeper node name")]
    InvalidName(String),
    #[error("zookeeper at {hosts}: cannot connect")]
    Connect {
        hosts: String,
        #[source]
        source: zk::Error,
    },
    #[error("zookeeper: {op} {path}")]
    Operation {
        op: &'static str,
        path: String,
        #[source]
        source: zk::Error,
    },
    #[error("cannot assign id {id} to {name}: only {invokers} invokers are registered")]
    NotEnoughInvokers {
        id: u32,
        name: String,
        invokers: usize,
    },
    #[error("{path} holds {data:02x?}, not an invoker id")]
    NotAnId { path: String, data: Vec<u8> },
}

impl ZooKeeperError {
    /// A connection or session problem that a new session may not have.
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Operation { source, .. } => matches!(
                source,
                zk::Error::ConnectionLoss
                    | zk::Error::SessionExpired
                    | zk::Error::Timeout
                    | zk::Error::NoHosts
                    | zk::Error::ClientClosed
            ),
            _ => false,
        }
    }
}

/// The invoker id of `unique_name` from the ZooKeeper ensemble `hosts` (`ZOOKEEPER_HOSTS`):
/// its earlier id if it has one, else a new one. With `overwrite`, the name is given that id
/// instead and a mapping of another name to it is removed (`--overwriteId`; the Scala invoker's
/// warning applies: only when no other invoker uses that id).
///
/// Waits for the ensemble without limit, as the Scala invoker does (a pod may start before
/// ZooKeeper does): every failed attempt is logged. Lost connections during the assignment are
/// retried for 5 s.
pub async fn assign_id(
    hosts: &str,
    unique_name: &str,
    overwrite: Option<u32>,
) -> Result<u32, ZooKeeperError> {
    validate_hosts(hosts)?;
    validate_name(unique_name)?;
    // Since when the operations of a connected session have been failing.
    let mut failing_since: Option<Instant> = None;
    loop {
        let result = match connect(hosts).await {
            Ok(client) => assign(&client, unique_name, overwrite).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(id) => return Ok(id),
            // Not connected (yet): wait on.
            Err(e @ ZooKeeperError::Connect { .. }) if e.is_transient() => {
                tracing::warn!(hosts, error = %openwhisk::errors::chain(&e), "zookeeper id assignment: waiting for zookeeper");
            }
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RETRY_FOR {
                    return Err(e);
                }
                tracing::warn!(hosts, error = %openwhisk::errors::chain(&e), "zookeeper id assignment: retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// The Scala invoker's check of `ZOOKEEPER_HOSTS`, and the client's own parse of it.
fn validate_hosts(hosts: &str) -> Result<(), ZooKeeperError> {
    if hosts.is_empty() || hosts.starts_with(':') || hosts.ends_with(':') {
        return Err(ZooKeeperError::InvalidHosts(hosts.to_owned()));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), ZooKeeperError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(ZooKeeperError::InvalidName(name.to_owned()));
    }
    Ok(())
}

async fn connect(hosts: &str) -> Result<zk::Client, ZooKeeperError> {
    tracing::info!(hosts, "zookeeper id assignment: connecting");
    zk::Client::connector()
        .with_session_timeout(SESSION_TIMEOUT)
        .with_connection_timeout(SESSION_TIMEOUT)
        // Plain creates: what a 3.4 server understands (newer ones too).
        .with_server_version(3, 4, 0)
        .connect(hosts)
        .await
        .map_err(|source| match source {
            zk::Error::BadArguments(_) => ZooKeeperError::InvalidHosts(hosts.to_owned()),
            source => ZooKeeperError::Connect {
                hosts: hosts.to_owned(),
                source,
            },
        })
}

fn op(op: &'static str, path: &str) -> impl FnOnce(zk::Error) -> ZooKeeperError {
    let path = path.to_owned();
    move |source| ZooKeeperError::Operation { op, path, source }
}

fn persistent() -> zk::CreateOptions<'static> {
    // Curator's default ACL, ZooDefs.Ids.OPEN_ACL_UNSAFE.
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn assign(
    client: &zk::Client,
    name: &str,
    overwrite: Option<u32>,
) -> Result<u32, ZooKeeperError> {
    let mine = format!("{MAPPING_PATH}/{name}");
    if let Some(id) = overwrite {
        return overwrite_id(client, name, &mine, id).await;
    }
    if let Some(id) = read_id(client, &mine).await? {
        tracing::info!(name, id, "zookeeper id assignment: the earlier id");
        return Ok(id);
    }
    tracing::info!(name, "zookeeper id assignment: no earlier id");
    client
        .mkdir(MAPPING_PATH, &persistent())
        .await
        .map_err(op("create", MAPPING_PATH))?;
    // SharedCount's seed.
    match client
        .create(COUNTER_PATH, &0i32.to_be_bytes(), &persistent())
        .await
    {
        Ok(_) | Err(zk::Error::NodeExists) => {}
        Err(e) => return Err(op("create", COUNTER_PATH)(e)),
    }
    loop {
        let (counter, stat) = client
            .get_data(COUNTER_PATH)
            .await
            .map_err(op("get", COUNTER_PATH))?;
        let counter = decode_counter(COUNTER_PATH, &counter)?;
        let invokers = client
            .list_children(MAPPING_PATH)
            .await
            .map_err(op("list", MAPPING_PATH))?
            .len();
        let id = counter.max(u32::try_from(invokers).unwrap_or(u32::MAX));
        let next = i32::try_from(id.saturating_add(1)).unwrap_or(i32::MAX);
        match client
            .set_data(COUNTER_PATH, &next.to_be_bytes(), Some(stat.version))
            .await
        {
            Ok(_) => {}
            // Another invoker took this id first: count again.
            Err(zk::Error::BadVersion) => continue,
            Err(e) => return Err(op("set", COUNTER_PATH)(e)),
        }
        return match client.create(&mine, &encode_id(id), &persistent()).await {
            Ok(_) => {
                tracing::info!(name, id, "zookeeper id assignment: a new id");
                Ok(id)
            }
            // An invoker of the same name got there first (two started at once): its id is
            // this name's; the id taken from the counter stays unused.
            Err(zk::Error::NodeExists) => read_id(client, &mine)
                .await?
                .ok_or_else(|| op("get", &mine)(zk::Error::NoNode)),
            Err(e) => Err(op("create", &mine)(e)),
        };
    }
}

async fn overwrite_id(
    client: &zk::Client,
    name: &str,
    mine: &str,
    id: u32,
) -> Result<u32, ZooKeeperError> {
    let names = match client.list_children(MAPPING_PATH).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => return Err(op("list", MAPPING_PATH)(e)),
    };
    if names.len() < usize::try_from(id).unwrap_or(usize::MAX) {
        return Err(ZooKeeperError::NotEnoughInvokers {
            id,
            name: name.to_owned(),
            invokers: names.len(),
        });
    }
    for other in &names {
        let path = format!("{MAPPING_PATH}/{other}");
        if read_id(client, &path).await? == Some(id) {
            match client.delete(&path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(op("delete", &path)(e)),
            }
            tracing::info!(name, id, from = %other, "zookeeper id assignment: id taken over");
            break;
        }
    }
    client
        .mkdir(MAPPING_PATH, &persistent())
        .await
        .map_err(op("create", MAPPING_PATH))?;
    match client.create(mine, &encode_id(id), &persistent()).await {
        Ok(_) => {}
        Err(zk::Error::NodeExists) => {
            client
                .set_data(mine, &encode_id(id), None)
                .await
                .map_err(op("set", mine))?;
        }
        Err(e) => return Err(op("create", mine)(e)),
    }
    tracing::info!(name, id, "zookeeper id assignment: overwritten");
    Ok(id)
}

async fn read_id(client: &zk::Client, path: &str) -> Result<Option<u32>, ZooKeeperError> {
    match client.get_data(path).await {
        Ok((data, _)) => decode_id(path, &data).map(Some),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(op("get", path)(e)),
    }
}

/// Java's `BigInteger.valueOf(id).toByteArray()`: big-endian two's complement in the fewest
/// bytes (0 → `00`, 128 → `00 80`).
pub fn encode_id(id: u32) -> Vec<u8> {
    let bytes = u64::from(id).to_be_bytes();
    // Keep one leading zero byte when the next byte's top bit is set (the sign).
    let mut start = 0;
    while start < bytes.len() - 1 && bytes[start] == 0 && bytes[start + 1] & 0x80 == 0 {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Scala's `BigInt(bytes).intValue`: two's complement of any length, its low 32 bits. A negative
/// or empty value is no invoker id.
pub fn decode_id(path: &str, data: &[u8]) -> Result<u32, ZooKeeperError> {
    let not_an_id = || ZooKeeperError::NotAnId {
        path: path.to_owned(),
        data: data.to_vec(),
    };
    let first = *data.first().ok_or_else(not_an_id)?;
    let mut low = [if first & 0x80 == 0 { 0 } else { 0xff }; 4];
    let tail = &data[data.len().saturating_sub(4)..];
    low[4 - tail.len()..].copy_from_slice(tail);
    u32::try_from(i32::from_be_bytes(low)).map_err(|_| not_an_id())
}

/// Curator's `SharedCount` value: a 4-byte big-endian int.
fn decode_counter(path: &str, data: &[u8]) -> Result<u32, ZooKeeperError> {
    <[u8; 4]>::try_from(data)
        .ok()
        .and_then(|b| u32::try_from(i32::from_be_bytes(b)).ok())
        .ok_or_else(|| ZooKeeperError::NotAnId {
            path: path.to_owned(),
            data: data.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_java_big_integers() {
        for (id, bytes) in [
            (0, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x00, 0x80]),
            (255, &[0x00, 0xff]),
            (256, &[0x01, 0x00]),
            (32_768, &[0x00, 0x80, 0x00]),
            (u32::MAX, &[0x00, 0xff, 0xff, 0xff, 0xff]),
        ] {
            assert_eq!(encode_id(id), bytes, "{id}");
            if i32::try_from(id).is_ok() {
                assert_eq!(decode_id("/p", bytes).unwrap(), id, "{id}");
            }
        }
    }

    #[test]
    fn ids_are_decoded_as_scala_big_int_int_value() {
        // Longer than needed (a sign byte more): the same value.
        assert_eq!(decode_id("/p", &[0x00, 0x00, 0x05]).unwrap(), 5);
        // Wider than 32 bits: the low 32 bits, as intValue.
        assert_eq!(decode_id("/p", &[0x01, 0x00, 0x00, 0x00, 0x07]).unwrap(), 7);
        // Negative, empty: not an id.
        for bad in [&[0x80][..], &[0xff, 0xff], &[]] {
            let e = decode_id("/invokers/idAssignment/mapping/x", bad).unwrap_err();
            assert!(
                matches!(e, ZooKeeperError::NotAnId { ref path, .. } if path.ends_with("/x")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_counter_is_a_four_byte_int() {
        assert_eq!(decode_counter("/c", &3i32.to_be_bytes()).unwrap(), 3);
        assert!(decode_counter("/c", &[0, 3]).is_err());
        assert!(decode_counter("/c", &(-1i32).to_be_bytes()).is_err());
    }

    #[test]
    fn hosts_and_names_are_checked_before_connecting() {
        for bad in ["", ":2181", "zk:"] {
            assert!(matches!(
                validate_hosts(bad),
                Err(ZooKeeperError::InvalidHosts(_))
            ));
        }
        validate_hosts("zk-0:2181,zk-1:2181/chroot").unwrap();
        for bad in ["", ".", "..", "a/b", "a\u{0}b"] {
            assert!(matches!(
                validate_name(bad),
                Err(ZooKeeperError::InvalidName(_))
            ));
        }
        validate_name("kind-worker.cluster-1").unwrap();
    }

    #[tokio::test]
    async fn invalid_hosts_fail_without_waiting() {
        let e = assign_id(":2181", "x", None).await.unwrap_err();
        assert!(matches!(e, ZooKeeperError::InvalidHosts(_)), "{e}");
    }
}
