//! The one shape of an error that names the field at fault, on every side: the control
//! plane's input files, the agent's enrollment file, its configuration and the xDS resources
//! it receives. Where a caller knows more (the file, the resource), it wraps this.

use serde::{Deserialize, Serialize};

/// What is wrong, and with which field: `spec.ports[0].port: port 0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The path of the field inside its document or message, e.g. `spec.ports[0].port`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error seen from the enclosing field: `port` within `spec.ports[0]` is
    /// `spec.ports[0].port`, `[2]` within `ips` is `ips[2]`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = match (parent.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => parent.to_owned(),
            (false, false) if self.field.starts_with('[') => format!("{parent}{}", self.field),
            (false, false) => format!("{parent}.{}", self.field),
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_field_then_message() {
        let e = FieldError::new("spec.ports[0].port", "port 0");
        assert_eq!(e.to_string(), "spec.ports[0].port: port 0");
        assert_eq!(
            serde_json::to_value(&e).expect("json"),
            serde_json::json!({"field": "spec.ports[0].port", "message": "port 0"})
        );
    }

    #[test]
    fn within_prefixes_the_path() {
        let e = FieldError::new("port", "port 0").within("spec.ports[0]");
        assert_eq!(e.field, "spec.ports[0].port");
        assert_eq!(FieldError::new("[2]", "x").within("ips").field, "ips[2]");
        assert_eq!(FieldError::new("", "x").within("ips").field, "ips");
        assert_eq!(FieldError::new("a", "x").within("").field, "a");
        assert_eq!(FieldError::new("b", "x").within("a").within("top").field, "top.a.b");
    }
}
