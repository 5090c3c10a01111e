//! Access policy: which endpoint a request calls, which model it names, and
//! whether a rule lets this caller do that.

pub mod endpoint;
pub mod model_list;
pub mod rules;
pub mod scope;

pub use endpoint::{EndpointClass, classify, normalize_path};
pub use rules::{DenyKind, Policy, Rule, Subjects};
