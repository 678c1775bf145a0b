//! End-to-end tests against the real local stack (RabbitMQ, dockerd, the registries), started
//! by `deploy/local/start.sh`. One test binary, so the stack is shared; every test uses its own
//! topology prefix and repository names, so tests run in parallel without meeting.

mod broker;
mod check_registries;
mod cli;
mod container;
mod contract;
mod copy;
mod daemon;
mod hostile;
mod logs;
mod manifests;
mod metrics;
mod pipeline;
mod pools;
mod properties;
mod registries;
mod registry_client;
mod registry_source;
mod retag;
mod secrets;
mod signing;
mod tls;
mod trace;
mod transient;
