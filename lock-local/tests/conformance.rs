//! The conformance suite against both lock-local backends.

use std::sync::Arc;

use conformance_tests::{conformance_suite, Suite};
use lock_core::LockClient;
use lock_local::{FileBackend, FileOptions, MemoryBackend};

conformance_suite!(memory_backend, {
    let store = MemoryBackend::new();
    Suite::new("memory", move || {
        let store = store.clone();
        async move { Ok(LockClient::new(store)) }
    })
});

conformance_suite!(file_backend, {
    let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
    Suite::new("file", move || {
        // A new FileBackend per client, as a separate process would open the directory.
        // Without fdatasync, so timing checks do not measure the disk of a busy CI machine;
        // lock-local's own tests cover the synced path.
        let opts = FileOptions::new(dir.path()).sync(false);
        async move { Ok(LockClient::new(FileBackend::connect(opts)?)) }
    })
});
