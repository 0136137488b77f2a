//! One factory for the pool in the container modes (`bridge`, `pcpm`, `netns`): specs that ask
//! for a VM ([`Sandbox::Vm`]: `wasm:0.1` actions, actions annotated `sandbox: vm`) go to the
//! VM backend, every other spec to the mode's container backend. In `vm` mode the pool talks
//! to the VM backend directly and needs no router.
//!
//! The VM backend is optional: an invoker on a host without QEMU or without the guest files
//! still runs containers, and a spec that asks for a VM fails with [`NoVmBackend`], which names
//! why (the activation's answer is the whisk error for an unprovisioned container).

use std::path::PathBuf;
use std::sync::Arc;

use super::{
    BackendError, BoxError, Container, ContainerFactory, ContainerSpec, CreateError, Errors,
    Sandbox,
};

/// Why the VM backend beside a container mode's did not start.
#[derive(Debug, thiserror::Error)]
pub enum VmBackendError {
    #[error("{} not found", .0.display())]
    NoQemu(PathBuf),
    #[error("starting the netpool of VM slots (needs root)")]
    Slots(#[source] netpool::PoolError),
    #[error("starting the VM backend")]
    Factory(#[source] super::vm::VmError),
}

/// The VM backend did not start, so a spec that asks for a VM cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
#[error("this invoker has no VM backend")]
pub struct NoVmBackend {
    /// Why the VM backend did not start (logged at start-up too).
    #[source]
    pub reason: Arc<VmBackendError>,
}

/// Containers and VMs behind one [`ContainerFactory`].
#[derive(Debug)]
pub struct Router {
    containers: Arc<dyn ContainerFactory>,
    vms: Result<Arc<dyn ContainerFactory>, NoVmBackend>,
}

impl Router {
    /// `vms` is the VM backend, or why there is none.
    pub fn new(
        containers: Arc<dyn ContainerFactory>,
        vms: Result<Arc<dyn ContainerFactory>, VmBackendError>,
    ) -> Self {
        let vms = vms.map_err(|e| NoVmBackend {
            reason: Arc::new(e),
        });
        Self { containers, vms }
    }

    /// Whether specs that ask for a VM can be served.
    pub fn has_vms(&self) -> bool {
        self.vms.is_ok()
    }
}

#[async_trait::async_trait]
impl ContainerFactory for Router {
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError> {
        match (spec.sandbox, &self.vms) {
            (Sandbox::Mode, _) => self.containers.create(spec).await,
            (Sandbox::Vm, Ok(vms)) => vms.create(spec).await,
            (Sandbox::Vm, Err(none)) => Err(CreateError::provision(none.clone())),
        }
    }

    /// Both backends, whatever the first reports.
    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError> {
        let mut removed = 0;
        let mut errors: Vec<BoxError> = Vec::new();
        let backends = std::iter::once(&self.containers).chain(self.vms.as_ref().ok());
        for backend in backends {
            match backend.remove_all(prefix).await {
                Ok(n) => removed += n,
                Err(e) => errors.push(Box::new(e)),
            }
        }
        match errors.len() {
            0 => Ok(removed),
            _ => Err(BackendError {
                action: "remove",
                id: prefix.to_owned(),
                source: Box::new(Errors(errors)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Call, FakeFactory};
    use super::super::{ImageRef, Sandbox};
    use super::*;

    fn spec(name: &str, sandbox: Sandbox) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: ImageRef::local("openwhisk/action-nodejs-v18"),
            memory_mb: 256,
            cpu_shares: 1024,
            cpus: None,
            env: Vec::new(),
            sandbox,
        }
    }

    #[tokio::test]
    async fn vm_specs_go_to_the_vm_backend_and_the_rest_to_the_mode_s() {
        let containers = Arc::new(FakeFactory::default());
        let vms = Arc::new(FakeFactory::default());
        let router = Router::new(containers.clone(), Ok(vms.clone()));
        assert!(router.has_vms());
        router.create(&spec("c1", Sandbox::Mode)).await.unwrap();
        router.create(&spec("v1", Sandbox::Vm)).await.unwrap();
        assert_eq!(containers.calls(), [Call::Create("c1".into())]);
        assert_eq!(vms.calls(), [Call::Create("v1".into())]);
        assert_eq!(router.remove_all("x_").await.unwrap(), 0);
        assert!(containers.calls().contains(&Call::RemoveAll("x_".into())));
        assert!(vms.calls().contains(&Call::RemoveAll("x_".into())));
    }

    #[tokio::test]
    async fn without_a_vm_backend_a_vm_spec_fails_naming_why() {
        let containers = Arc::new(FakeFactory::default());
        let router = Router::new(
            containers.clone(),
            Err(VmBackendError::NoQemu("qemu-system-x86_64".into())),
        );
        assert!(!router.has_vms());
        let Err(e) = router.create(&spec("v1", Sandbox::Vm)).await else {
            panic!("a VM spec was served without a VM backend");
        };
        assert!(matches!(e, CreateError::Provision(_)));
        assert_eq!(
            openwhisk::errors::chain(&e),
            "cannot provision a container: this invoker has no VM backend: qemu-system-x86_64 not found"
        );
        // Containers are unaffected.
        router.create(&spec("c1", Sandbox::Mode)).await.unwrap();
        assert_eq!(containers.calls(), [Call::Create("c1".into())]);
    }
}
