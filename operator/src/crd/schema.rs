//! Schema pieces the kinds share: CEL rules (with the messages the API
//! server returns, naming the field) and hand-written schemas for what
//! schemars cannot express.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A port number, or a port name as IANA and Kubernetes define it: at most
/// 15 of `a-z`, `0-9` and `-`, at least one letter, no `--`, no `-` at
/// either end. A number in quotes is not a name.
pub const PORT_RULE: &str = "type(self.port) == int ? (self.port >= 1 && self.port <= 65535) : (size(self.port) <= 15 && self.port.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.port.matches('[a-z]') && !self.port.contains('--'))";
pub const PORT_MESSAGE: &str = "spec.port must be a port number (1-65535) or a container port name (at most 15 of a-z, 0-9 and -, with at least one letter; a number in quotes is not a name)";

/// The resources the gateway container may be given.
pub const QUANTITY_NAMES_RULE: &str = "self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'])";
pub const QUANTITY_NAMES_MESSAGE: &str = "only cpu, memory and ephemeral-storage can be set";

/// Every value a non-negative quantity (`500m`, `128Mi`, `1`; not `128MB`).
pub const QUANTITIES_RULE: &str =
    "self.all(k, isQuantity(string(self[k])) && !string(self[k]).startsWith('-'))";
pub const QUANTITIES_MESSAGE: &str = "must be non-negative quantities such as 500m, 1, 128Mi or 1Gi (MB, GB and spaces are not quantity units)";

/// An https URL with a host (an `http://` one only with `insecure: true`);
/// `{field}` is the field's name.
pub fn url_rule(field: &str) -> String {
    format!(
        "!has(self.{field}) || (isURL(self.{field}) && url(self.{field}).getHostname() != '' && (url(self.{field}).getScheme() == 'https' || (url(self.{field}).getScheme() == 'http' && has(self.insecure) && self.insecure)))"
    )
}

/// Labels a selector requires: at most 32, values as Kubernetes accepts
/// them on pods (a value no pod can carry would silently select nothing).
pub fn label_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
        },
    })
}

/// Environment variables to set: at most 32.
pub fn env_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"type": "string", "maxLength": 4096},
        "x-kubernetes-validations": [{
            "rule": "self.all(k, size(k) <= 256 && k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
            "message": "spec.openai.env names must be environment variable names (letters, digits, _)",
        }],
    })
}

/// A port number or name (the rule on the spec says which).
pub fn port(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The model container's port (number or name); the gateway takes it over.",
        "x-kubernetes-int-or-string": true,
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": 65535},
            {"type": "string", "maxLength": 15},
        ],
    })
}

/// A map of resource name to quantity (the schema of `Quantity`, without
/// its page of prose).
pub fn quantities(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 3,
        "additionalProperties": {
            "x-kubernetes-int-or-string": true,
        },
    })
}

/// [`url_rule`] for the token endpoint, which sits one level down.
pub fn exchange_url_rule() -> String {
    "!has(self.tokenExchange) || (isURL(self.tokenExchange.tokenEndpoint) && url(self.tokenExchange.tokenEndpoint).getHostname() != '' && (url(self.tokenExchange.tokenEndpoint).getScheme() == 'https' || (url(self.tokenExchange.tokenEndpoint).getScheme() == 'http' && has(self.insecure) && self.insecure)))".to_owned()
}
