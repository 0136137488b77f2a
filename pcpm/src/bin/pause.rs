//! `pcpm-pause`: the process of a pause container. It holds the container's namespaces and
//! does what the Kubernetes pause container does: as PID 1 it reaps every zombie handed to it,
//! and it exits 0 on SIGTERM or SIGINT. Built statically (`runtimes/build.sh`) into an image
//! FROM scratch.

use std::process::ExitCode;

extern "C" fn on_stop(_: libc::c_int) {
    // SAFETY: `_exit` is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(0) }
}

extern "C" fn on_child(_: libc::c_int) {
    // Reap every exited child; WNOHANG keeps the handler from blocking.
    // SAFETY: `waitpid` is async-signal-safe; a null status pointer is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is an `extern "C"`
    // function of the signature `sa_handler` expects, and lives for the whole program.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("pcpm-pause {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if std::process::id() != 1 {
        eprintln!("pcpm-pause: should be the first process (PID 1) of its container");
    }
    let ok = install(libc::SIGTERM, on_stop, 0)
        && install(libc::SIGINT, on_stop, 0)
        && install(
            libc::SIGCHLD,
            on_child,
            libc::SA_NOCLDSTOP | libc::SA_RESTART,
        );
    if !ok {
        eprintln!("pcpm-pause: cannot install signal handlers");
        return ExitCode::FAILURE;
    }
    loop {
        // SAFETY: `pause` only waits for a signal.
        unsafe { libc::pause() };
    }
}
