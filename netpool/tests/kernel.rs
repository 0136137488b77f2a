//! netpool against the real kernel, as root. Every test uses its own pool name and subnet, so
//! they run in parallel, and each ends by checking with `ip` (an independent tool) that nothing
//! of its pool is left.
//!
//! Processes inside slots are this test binary run again in a child role (see `child_role`):
//! no other program is needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netpool::{
    Lease, NamespaceProbe, NetPool, OnEmpty, PoolConfig, Released, ScrubFailure, SlotKind,
};

const CHILD_ENV: &str = "NETPOOL_TEST_CHILD";

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "netpool kernel tests create namespaces, veths and bridges: run them as root (scripts/test.sh)"
    );
}

fn config(name: &str, second_octet: u8) -> PoolConfig {
    let mut c = PoolConfig::new(name, Ipv4Addr::new(10, second_octet, 0, 0), 16);
    c.max_slots = 64;
    c.lease_timeout = Duration::from_secs(20);
    c
}

/// This test binary, run again to play `role` (see `child_role`).
fn child(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_role",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, role)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// Starts a child in the lease's namespace and waits for it to print `READY`.
fn spawn_in(lease: &Lease, role: &str) -> Child {
    let mut cmd = child(role);
    lease.enter_on_exec(&mut cmd);
    let mut c = cmd.spawn().expect("spawn child");
    wait_ready(&mut c);
    c
}

fn wait_ready(c: &mut Child) {
    let out = c.stdout.as_mut().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(out);
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "child exited before READY"
        );
        // libtest prints "test child_role ... " before the body runs, on the same line.
        if line.trim_end().ends_with("READY") {
            return;
        }
    }
}

/// Runs a child to completion in the lease's namespace; true when it exited 0.
fn run_in(lease: &Lease, role: &str) -> bool {
    let mut cmd = child(role);
    cmd.stdout(Stdio::null());
    lease.enter_on_exec(&mut cmd);
    cmd.status().expect("run child").success()
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The child side. Roles: `serve:PORT` (answer every TCP connection with "hello"),
/// `connect:IP:PORT` (exit 0 when a connection succeeds within a second), `sleep`,
/// `ip:ARGS` (run `ip` with the comma-separated ARGS), `hold:NAME:OCTET` (create a pool with
/// leases held, then wait to be killed).
#[test]
#[ignore = "not a test: the body of child processes that other tests start in a slot"]
fn child_role() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        panic!("child_role runs only as a child of another test");
    };
    let parts: Vec<&str> = role.split(':').collect();
    match parts[0] {
        "serve" => {
            let l = TcpListener::bind(("0.0.0.0", parts[1].parse::<u16>().unwrap())).unwrap();
            println!("READY");
            std::io::stdout().flush().unwrap();
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"hello");
            }
        }
        "connect" => {
            let addr = SocketAddrV4::new(parts[1].parse().unwrap(), parts[2].parse().unwrap());
            let ok = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok();
            std::process::exit(if ok { 0 } else { 1 });
        }
        "sleep" => {
            println!("READY");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(300));
        }
        "ip" => {
            let ok = Command::new("ip")
                .args(parts[1].split(','))
                .status()
                .unwrap()
                .success();
            std::process::exit(if ok { 0 } else { 1 });
        }
        "hold" => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let mut c = config(parts[1], parts[2].parse().unwrap());
                c.low_watermark = 3;
                c.high_watermark = 3;
                let pool = NetPool::new(c).await.unwrap();
                let held = [pool.lease().await.unwrap(), pool.lease().await.unwrap()];
                pool.wait_idle(3, Duration::from_secs(20)).await.unwrap();
                println!("READY");
                std::io::stdout().flush().unwrap();
                tokio::time::sleep(Duration::from_secs(300)).await;
                drop(held);
            });
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Asserts with `ip` and `/proc/self/mountinfo` that no link, mount or folder of pool `name`
/// is left.
fn assert_nothing_left(name: &str) {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let ours: Vec<&str> = links
        .lines()
        .filter(|l| {
            l.split(": ").nth(1).is_some_and(|n| {
                n.starts_with(&format!("{name}v")) || n.starts_with(&format!("{name}br"))
            })
        })
        .collect();
    assert!(ours.is_empty(), "links of pool {name} left: {ours:#?}");
    let dir = format!("/run/netpool/{name}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir), "mounts under {dir} left");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left");
    // The host guard's chains and jumps, by iptables itself.
    let rules = Command::new("iptables").arg("-S").output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let chain = format!("NETPOOL-{name}-");
    let left: Vec<&str> = rules.lines().filter(|l| l.contains(&chain)).collect();
    assert!(
        left.is_empty(),
        "iptables rules of pool {name} left: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_from_host_and_slots_isolated_from_each_other() {
    require_root();
    // Host services on every address: one whose port the pool lets through, one it does not.
    let allowed = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let denied = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let denied_port = denied.local_addr().unwrap().port();
    let mut c = config("ta", 201);
    c.low_watermark = 2;
    c.high_watermark = 2;
    c.allow_host_ports = vec![(allowed_port, allowed_port)];
    let pool = NetPool::new(c).await.unwrap();
    let a = pool.lease().await.unwrap();
    let b = pool.lease().await.unwrap();
    assert_ne!(a.ip(), b.ip());
    assert_eq!(a.gateway(), b.gateway());
    assert_eq!(a.prefix_len(), 22);
    assert!(a.netns_path().exists());

    // A serves TCP on its address; the host reaches it.
    let server = spawn_in(&a, "serve:8080");
    let mut s = TcpStream::connect_timeout(
        &SocketAddrV4::new(a.ip(), 8080).into(),
        Duration::from_secs(2),
    )
    .expect("host reaches the slot");
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello");

    // Both host ends are isolated bridge ports (checked with iproute2's own tool).
    for id in [a.id(), b.id()] {
        let out = Command::new("bridge")
            .args(["-d", "link", "show", "dev", &format!("tav{id}")])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.contains("isolated on"),
            "port tav{id} not isolated: {out}"
        );
    }

    // B reaches the host only on the allowed port (on the gateway and on the host's other
    // addresses: docker0's, say), and not A.
    assert!(
        run_in(&b, &format!("connect:{}:{allowed_port}", b.gateway())),
        "slot must reach the gateway on an allowed port"
    );
    assert!(
        !run_in(&b, &format!("connect:{}:{denied_port}", b.gateway())),
        "slot reached a host port that is not allowed"
    );
    if let Some(other) = host_address_off_the_pool("ta") {
        assert!(
            run_in(&b, &format!("connect:{other}:{allowed_port}")),
            "slot must reach {other} on an allowed port"
        );
        assert!(
            !run_in(&b, &format!("connect:{other}:{denied_port}")),
            "slot reached {other}:{denied_port}"
        );
    }
    assert!(
        !run_in(&b, &format!("connect:{}:8080", a.ip())),
        "slot B reached slot A"
    );

    kill(server);
    drop(s);
    let ips = [a.ip(), b.ip()];
    a.release().await;
    b.release().await;
    pool.shutdown().await.unwrap();
    assert_nothing_left("ta");
    drop((allowed, denied));
    // The host's conntrack table kept nothing of the slots' traffic.
    if let Ok(table) = std::fs::read_to_string("/proc/net/nf_conntrack") {
        for ip in ips {
            let (src, dst) = (format!(" src={ip} "), format!(" dst={ip} "));
            assert!(
                !table.lines().any(|l| l.contains(&src) || l.contains(&dst)),
                "conntrack entries of {ip} left"
            );
        }
    }
}

/// An IPv4 address of the host on a link that is not pool `name`'s (nor loopback).
fn host_address_off_the_pool(name: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let link = words.get(1)?;
        if *link == "lo" || link.starts_with(&format!("{name}br")) {
            return None;
        }
        words.get(3)?.split('/').next()?.parse().ok()
    })
}

fn link_mac(name: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Reads the slot server's greeting, failing after two seconds.
fn greeting(ip: Ipv4Addr) -> String {
    let mut s =
        TcpStream::connect_timeout(&SocketAddrV4::new(ip, 8080).into(), Duration::from_secs(2))
            .expect("host reaches the slot");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got)
        .expect("the slot's reply arrives");
    got
}

/// A Linux bridge without an assigned MAC takes the lowest MAC among its ports; when slots were
/// added later, a tenant that had resolved the gateway kept sending its replies to the old MAC
/// and they were lost until its ARP entry went stale (an invoker saw /init take 14 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_mac_stays_fixed_while_slots_come_and_go() {
    require_root();
    let mut c = config("tm", 212);
    c.low_watermark = 1;
    c.high_watermark = 1;
    let pool = NetPool::new(c).await.unwrap();
    let a = pool.lease().await.unwrap();
    let bridge = "tmbr0";
    let before = link_mac(bridge);
    let assigned =
        std::fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type")).unwrap();
    assert_eq!(
        assigned.trim(),
        "3",
        "the bridge's MAC is set by netpool, not inherited from a port"
    );

    // A's tenant has talked to the gateway: its neighbour table holds the bridge's MAC.
    let server = spawn_in(&a, "serve:8080");
    assert_eq!(greeting(a.ip()), "hello");
    // Sixteen more slots: new ports with random host-side MACs join the bridge, and go again.
    let mut more = Vec::new();
    for _ in 0..16 {
        more.push(pool.lease().await.unwrap());
    }
    assert_eq!(
        link_mac(bridge),
        before,
        "the bridge's MAC changed when ports joined"
    );
    assert_eq!(
        greeting(a.ip()),
        "hello",
        "A's replies still reach the host"
    );
    for l in more {
        l.release().await;
    }
    assert_eq!(
        link_mac(bridge),
        before,
        "the bridge's MAC changed when ports left"
    );
    assert_eq!(greeting(a.ip()), "hello");

    kill(server);
    a.release().await;
    pool.shutdown().await.unwrap();
    assert_nothing_left("tm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_reach_each_other_when_isolation_is_off() {
    require_root();
    let mut c = config("tg", 207);
    c.isolate_slots = false;
    c.on_empty = OnEmpty::CreateInline;
    let pool = NetPool::new(c).await.unwrap();
    let a = pool.lease().await.unwrap();
    let b = pool.lease().await.unwrap();
    let server = spawn_in(&a, "serve:8080");
    assert!(
        run_in(&b, &format!("connect:{}:8080", a.ip())),
        "slot B must reach slot A"
    );
    kill(server);
    a.release().await;
    b.release().await;
    pool.shutdown().await.unwrap();
    assert_nothing_left("tg");
    let forward = Command::new("iptables")
        .args(["-S", "FORWARD"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&forward.stdout).contains("tgbr"),
        "iptables rule left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_slots_return_dirty_ones_are_destroyed() {
    require_root();
    // No refill: every slot is made inline, so the recycled one is the only idle one.
    // A host service the pool lets its slots reach.
    let host = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = host.local_addr().unwrap().port();
    let mut c = config("tb", 202);
    c.on_empty = OnEmpty::CreateInline;
    c.allow_host_ports = vec![(port, port)];
    let pool = NetPool::new(c).await.unwrap();

    // A tenant that talked to the host (neighbour entry, conntrack) and exited: recycled.
    let lease = pool.lease().await.unwrap();
    let id = lease.id();
    assert!(run_in(
        &lease,
        &format!("connect:{}:{port}", lease.gateway())
    ));
    // The connection left host conntrack entries (deleted through ctnetlink by the scrub).
    let tracked = |ip: Ipv4Addr| {
        std::fs::read_to_string("/proc/net/nf_conntrack")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&format!(" src={ip} ")) || l.contains(&format!(" dst={ip} ")))
    };
    let tenant_ip = lease.ip();
    let conntrack_loaded = std::path::Path::new("/proc/net/nf_conntrack").exists();
    assert_eq!(
        tracked(tenant_ip),
        conntrack_loaded,
        "the connection left no conntrack entry"
    );
    let outcome = lease.release().await;
    assert!(matches!(outcome, Released::Recycled), "{outcome:?}");
    assert!(!tracked(tenant_ip), "conntrack entries of {tenant_ip} left");
    let lease = pool.lease().await.unwrap();
    assert_eq!(lease.id(), id, "the clean slot is the one handed out next");

    // A process still running inside: destroyed.
    let sleeper = spawn_in(&lease, "sleep");
    let outcome = lease.release().await;
    assert!(
        matches!(outcome, Released::Destroyed(ScrubFailure::Process(_))),
        "{outcome:?}"
    );
    kill(sleeper);

    // A listening socket left (held by this process, as a leaked fd would be): destroyed.
    let lease = pool.lease().await.unwrap();
    let ns = lease.netns_fd().try_clone_to_owned().unwrap();
    let ip = lease.ip();
    let listener = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        TcpListener::bind((ip, 9999)).unwrap()
    })
    .join()
    .unwrap();
    let outcome = lease.release().await;
    assert!(
        matches!(outcome, Released::Destroyed(ScrubFailure::Socket(_))),
        "{outcome:?}"
    );
    drop(listener);

    // An extra address, then an extra route: destroyed.
    for change in [
        "ip:addr,add,192.0.2.1/32,dev,lo",
        "ip:route,add,198.51.100.0/24,dev,eth0",
    ] {
        let lease = pool.lease().await.unwrap();
        assert!(run_in(&lease, change), "{change} failed");
        let outcome = lease.release().await;
        assert!(
            matches!(outcome, Released::Destroyed(ScrubFailure::State(_))),
            "{change}: {outcome:?}"
        );
    }

    // The next tenant finds nothing of the previous ones.
    let lease = pool.lease().await.unwrap();
    let out = {
        let mut cmd = Command::new("ip");
        cmd.args(["-o", "addr"]);
        lease.enter_on_exec(&mut cmd);
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    assert!(!out.contains("192.0.2.1"), "{out}");
    assert!(out.contains(&lease.ip().to_string()), "{out}");
    assert!(
        !run_in(&lease, &format!("connect:{}:9999", lease.ip())),
        "old listener still answers"
    );
    lease.release().await;

    // A lease dropped without release is tainted and destroyed, not reused.
    let lease = pool.lease().await.unwrap();
    let dropped_path = lease.netns_path().to_owned();
    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dropped_path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!dropped_path.exists() || pool.stats().idle > 0);

    pool.shutdown().await.unwrap();
    assert_nothing_left("tb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_sees_what_a_tenant_changed() {
    require_root();
    let mut c = config("th", 208);
    c.on_empty = OnEmpty::CreateInline;
    let pool = NetPool::new(c).await.unwrap();
    let lease = pool.lease().await.unwrap();
    let probe = NamespaceProbe::open(lease.netns_path()).await.unwrap();
    let before = probe.state().await.unwrap();
    assert_eq!(probe.state().await.unwrap(), before, "state is stable");
    assert!(probe.live_sockets().await.unwrap().is_empty());
    assert!(probe.processes().await.unwrap().is_empty());

    let sleeper = spawn_in(&lease, "sleep");
    assert_eq!(probe.processes().await.unwrap(), vec![sleeper.id()]);
    kill(sleeper);
    assert!(run_in(&lease, "ip:addr,add,192.0.2.7/32,dev,lo"));
    let after = probe.state().await.unwrap();
    assert!(
        after.diff(&before).contains("+address"),
        "{}",
        after.diff(&before)
    );

    drop(probe);
    let outcome = lease.release().await;
    assert!(
        matches!(outcome, Released::Destroyed(ScrubFailure::State(_))),
        "{outcome:?}"
    );
    pool.shutdown().await.unwrap();
    assert_nothing_left("th");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_leases_from_a_pool_of_twenty() {
    require_root();
    let mut c = config("tc", 203);
    c.low_watermark = 20;
    c.high_watermark = 20;
    c.max_slots = 128;
    c.lease_timeout = Duration::from_secs(30);
    let pool = NetPool::new(c).await.unwrap();
    pool.wait_idle(20, Duration::from_secs(30)).await.unwrap();

    let started = Instant::now();
    let leases = futures::future::join_all((0..100).map(|_| {
        let pool = pool.clone();
        async move { pool.lease().await }
    }))
    .await;
    let elapsed = started.elapsed();
    let leases: Vec<Lease> = leases
        .into_iter()
        .map(|l| l.expect("lease within deadline"))
        .collect();
    let mut ips: Vec<_> = leases.iter().map(Lease::ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 100, "every lease has its own slot");
    println!("100 concurrent leases from a warm pool of 20 took {elapsed:?}");
    futures::future::join_all(leases.into_iter().map(Lease::release)).await;
    pool.shutdown().await.unwrap();
    assert_nothing_left("tc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_slot_passes_arp_and_icmp_through_the_tap() {
    require_root();
    let mut c = config("td", 204);
    c.kind = SlotKind::Vm;
    c.on_empty = OnEmpty::CreateInline;
    let pool = NetPool::new(c).await.unwrap();
    let lease = pool.lease().await.unwrap();
    assert_eq!(lease.tap_name(), Some(netpool::TAP_NAME));
    let tap = lease.open_tap().await.unwrap().expect("vm slot has a tap");
    let (mac, ip, gw) = (lease.mac(), lease.ip(), lease.gateway());

    // The test plays the guest: ARP for the gateway, then ping it.
    let gw_mac = tokio::task::spawn_blocking(move || {
        write_frame(&tap, &arp_request(mac, ip, gw));
        let reply = read_frame(&tap, |f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 2]
                && f[28..32] == gw.octets()
        })
        .expect("ARP reply from the host");
        let gw_mac: [u8; 6] = reply[22..28].try_into().unwrap();
        write_frame(&tap, &icmp_echo(mac, gw_mac, ip, gw, 0x4242));
        read_frame(&tap, |f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 1
                && f[26..30] == gw.octets()
                && f[34] == 0
        })
        .expect("ICMP echo reply from the host");
        gw_mac
    })
    .await
    .unwrap();
    assert_ne!(gw_mac, [0; 6]);

    lease.release().await;
    pool.shutdown().await.unwrap();
    assert_nothing_left("td");
}

fn write_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is a valid buffer of the given length; `fd` is an open TAP fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(
        n,
        frame.len() as isize,
        "write to tap: {}",
        std::io::Error::last_os_error()
    );
}

fn read_frame(fd: &OwnedFd, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        // SAFETY: `buf` is a valid writable buffer of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 && want(&buf[..n as usize]) {
            return Some(buf[..n as usize].to_vec());
        }
    }
    None
}

fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"netpool-test-payload");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_overlapping_another_is_refused_naming_both_and_leaves_nothing() {
    require_root();
    let mut c = config("tn", 213);
    c.low_watermark = 1;
    c.high_watermark = 1;
    let first = NetPool::new(c).await.unwrap();
    first.wait_idle(1, Duration::from_secs(20)).await.unwrap();
    // Another name, a range inside the first pool's.
    let mut c = config("to", 213);
    c.subnet = Ipv4Addr::new(10, 213, 0, 0);
    c.subnet_prefix_len = 20;
    let err = NetPool::new(c).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, netpool::PoolError::Overlap { pool, .. } if pool == "to"),
        "{msg}"
    );
    for part in [
        "pool to",
        "10.213.0.0/20",
        "address 10.213.0.1/22 on tnbr0",
        "route 10.213.0.0/22 via tnbr0",
    ] {
        assert!(msg.contains(part), "{msg:?} should name {part:?}");
    }
    assert_nothing_left("to");
    // The first pool is untouched and still serves.
    let lease = first.lease().await.unwrap();
    assert!(run_in(&lease, "ip:link,show,eth0"));
    lease.release().await;
    first.shutdown().await.unwrap();
    assert_nothing_left("tn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_auto_picks_a_range_no_address_or_route_of_the_host_overlaps() {
    require_root();
    let mut c = config("tq", 0);
    c.subnet_auto = true;
    let pool = NetPool::new(c).await.unwrap();
    let (subnet, len) = pool.subnet();
    assert_eq!(len, 16);
    assert!((200..=250).contains(&subnet.octets()[1]), "{subnet}");
    // Its first bridge claims the range at once; nothing else on the host routes into it.
    let routes = Command::new("ip")
        .args(["-4", "-o", "route", "show", "root", &format!("{subnet}/16")])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    let lines: Vec<&str> = routes.lines().collect();
    assert_eq!(lines.len(), 1, "{routes}");
    assert!(lines[0].contains("dev tqbr0"), "{routes}");
    pool.shutdown().await.unwrap();
    assert_nothing_left("tq");
}

/// Pools that start at once with `subnet_auto` each get a range of their own: the search and the
/// claim are one step under a host-wide lock (without it both picked the same range and one was
/// refused for the other's bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_starting_at_once_with_subnet_auto_get_ranges_apart() {
    require_root();
    let names = ["ta1", "ta2", "ta3", "ta4"];
    let pools = futures::future::join_all(names.map(|name| {
        let mut c = config(name, 0);
        c.subnet_auto = true;
        c.subnet_prefix_len = 20;
        NetPool::new(c)
    }))
    .await;
    let pools: Vec<NetPool> = pools
        .into_iter()
        .map(|p| p.expect("every pool starts"))
        .collect();
    let mut subnets: Vec<_> = pools.iter().map(|p| p.subnet().0).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), names.len(), "{subnets:?}");
    for pool in pools {
        pool.shutdown().await.unwrap();
    }
    for name in names {
        assert_nothing_left(name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enter_on_exec_holds_the_namespace_after_the_lease_ends() {
    require_root();
    let mut c = config("tp", 214);
    c.on_empty = OnEmpty::CreateInline;
    let pool = NetPool::new(c).await.unwrap();
    let lease = pool.lease().await.unwrap();
    let (ip, path) = (lease.ip(), lease.netns_path().to_owned());
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "-4", "addr", "show", "dev", "eth0"])
        .stdout(Stdio::piped());
    lease.enter_on_exec(&mut cmd);
    // Dropped before the spawn: the pool closes its fd and unmounts the namespace.
    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        assert!(Instant::now() < deadline, "the dropped lease's slot stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Fresh fds take the lowest free numbers, the pool's old one among them.
    let _fillers: Vec<std::fs::File> = (0..16)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let out = cmd.output().expect("spawn into the slot's namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(&format!("inet {ip}/")), "{text}");
    drop(cmd);
    pool.shutdown().await.unwrap();
    assert_nothing_left("tp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_reconciles_and_shutdown_leaves_nothing() {
    require_root();
    let mut holder = child("hold:te:205").spawn().unwrap();
    wait_ready(&mut holder);
    // SIGKILL: no destructor runs; mounts, veths and the bridge stay behind.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let left = std::fs::read_dir("/run/netpool/te")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 5, "the killed run left its 5 namespace mounts");

    let pool = NetPool::new(config("te", 205)).await.unwrap();
    assert_eq!(pool.stats().allocated, 0);
    pool.shutdown().await.unwrap();
    assert_nothing_left("te");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "creates 1100 namespaces (about 10 s and 350 MiB of kernel memory); scripts/test.sh runs it explicitly"]
async fn eleven_hundred_slots_over_two_bridges() {
    require_root();
    // The host service the last slot reaches, on every address: the host guard lets its port
    // through and no other.
    let host = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = host.local_addr().unwrap().port();
    let mut c = config("tf", 206);
    c.max_slots = 1100;
    c.low_watermark = 1100;
    c.high_watermark = 1100;
    c.allow_host_ports = vec![(port, port)];
    let pool = NetPool::new(c).await.unwrap();
    pool.wait_idle(1100, Duration::from_secs(240))
        .await
        .unwrap();
    assert_eq!(pool.stats().bridges, 2);
    let leases: Vec<Lease> = futures::future::join_all((0..1100).map(|_| pool.lease()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let bridges: std::collections::BTreeSet<_> = leases.iter().map(|l| l.gateway()).collect();
    assert_eq!(bridges.len(), 2);
    // The last slot reaches the host through the second bridge.
    assert!(run_in(
        &leases[1099],
        &format!("connect:{}:{port}", leases[1099].gateway())
    ));
    drop(leases);
    pool.shutdown().await.unwrap();
    assert_nothing_left("tf");
}
