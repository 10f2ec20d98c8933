//! Who this process is. A node has a stable name (`LINEAGED_NODE_ID`, else
//! the host name) and each run of it a unique instance id,
//! `{name}:{pid}:{nonce}`, which is what holds leases and claims jobs (and
//! so fences them): two processes on one host never share one, with no
//! setting. The name lets a restarted daemon free what its previous run
//! left behind at once instead of waiting for the leases to expire, without
//! touching what a live sibling process on the same host holds.

use std::path::Path;
use std::sync::Mutex;

/// Instances made in this process (tests run several daemons in one).
static MINE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// This process's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's stable name.
    pub name: String,
    /// Unique to this process: `{name}:{pid}:{nonce}`.
    pub instance: String,
}

impl Identity {
    /// A new run of node `name`.
    pub fn new(name: &str) -> Identity {
        let instance = format!(
            "{name}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        MINE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(instance.clone());
        Identity {
            name: name.to_string(),
            instance,
        }
    }

    /// Whether `holder` (a lease holder or a job's `locked_by`, perhaps
    /// with a worker suffix such as `/gates`) is an earlier run of this node
    /// that is gone:
    /// - `{name}` or `{name}/…`: written by a version before instance ids;
    /// - `{name}:{pid}:{nonce}` whose process no longer runs on this host,
    ///   or that has this process's pid but is none of its instances (a
    ///   container restarted: the new run got the same pid).
    ///
    /// A holder whose process may still run (a sibling on this host, or a
    /// pid reused by another program) is not: it is freed when its lease
    /// expires, as any other replica's.
    pub fn is_previous_run(&self, holder: &str) -> bool {
        let base = holder.split_once('/').map_or(holder, |(b, _)| b);
        if base == self.name {
            return true;
        }
        let Some(rest) = base
            .strip_prefix(self.name.as_str())
            .and_then(|r| r.strip_prefix(':'))
        else {
            return false;
        };
        let Some((pid, nonce)) = rest.split_once(':') else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return false;
        };
        if nonce.is_empty() {
            return false;
        }
        if pid == std::process::id() {
            // This pid: one of this process's instances, else a run before
            // a container restart (which got the same pid).
            let mine = MINE.lock().unwrap_or_else(|e| e.into_inner());
            return !mine.iter().any(|m| m == base);
        }
        // Without /proc, liveness is unknown: wait for the lease.
        Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_unique_per_process_run() {
        let (a, b) = (Identity::new("host-1"), Identity::new("host-1"));
        assert_ne!(a.instance, b.instance);
        assert!(
            a.instance
                .starts_with(&format!("host-1:{}:", std::process::id()))
        );
    }

    #[test]
    fn only_gone_runs_of_this_node_are_previous_runs() {
        let me = Identity::new("host-1");
        // A process that ran and exited: its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        // A live sibling process on this host.
        let mut sibling = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = sibling.id();
        let other_run = format!("host-1:{}:deadbeef", std::process::id());
        for (holder, previous) in [
            ("host-1".to_string(), true),
            ("host-1/gates".to_string(), true),
            (format!("host-1:{dead}:0badf00d"), true),
            (format!("host-1:{dead}:0badf00d/gates"), true),
            (other_run.clone(), true),
            (me.instance.clone(), false),
            // Another daemon in this process (as tests run them).
            (Identity::new("host-1").instance, false),
            (format!("{}/gates", me.instance), false),
            (format!("host-1:{live}:12345678"), false),
            (format!("host-10:{dead}:0badf00d"), false),
            (format!("host-2:{dead}:0badf00d"), false),
            ("host-1:x:y".to_string(), false),
            ("host-1:1".to_string(), false),
            ("other".to_string(), false),
        ] {
            assert_eq!(me.is_previous_run(&holder), previous, "{holder}");
        }
        sibling.kill().unwrap();
        sibling.wait().unwrap();
        assert!(me.is_previous_run(&format!("host-1:{live}:12345678")));
    }
}
