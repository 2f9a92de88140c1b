//! Canonical proto3 JSON for `coffer.v1` messages.
//!
//! prost's generated types do not know the JSON mapping, so a message is re-read as a
//! `prost_reflect::DynamicMessage` against the API's own descriptor set (compiled into
//! `coffer-proto`, the same one the server serves through reflection) and serialized from there.
//! The output is what grpcurl prints: camelCase field names, enum values by name, 64-bit integers
//! as strings, Timestamps and Durations in their string forms, default values left out.

use std::sync::LazyLock;

use prost_reflect::{DescriptorError, DescriptorPool, DynamicMessage};

/// The descriptors of `coffer.v1` and the well-known types it imports, decoded once.
static DESCRIPTOR_POOL: LazyLock<Result<DescriptorPool, DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(coffer_proto::v1::FILE_DESCRIPTOR_SET));

/// Why a message could not be rendered as JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The descriptor set compiled into `coffer-proto` does not decode: a build defect.
    #[error("decode the compiled-in descriptor set: {0}")]
    DescriptorSet(String),
    /// The message is not a `coffer.v1` message (or a well-known type it uses).
    #[error("message type {0} is not part of the coffer.v1 API")]
    UnknownMessage(String),
    /// The message's encoding does not match its descriptor.
    #[error("re-read {message} for JSON")]
    Decode {
        /// Full name of the message type.
        message: String,
        #[source]
        source: prost::DecodeError,
    },
    /// serde_json refused the value.
    #[error("serialize {message} as JSON")]
    Serialize {
        /// Full name of the message type.
        message: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Renders a `coffer.v1` message as canonical proto3 JSON.
///
/// Fails only if `M` is not a type of the public API (or a well-known type it imports), which is a
/// programming error, never because of what a server sent.
pub fn to_json<M>(message: &M) -> Result<serde_json::Value, JsonError>
where
    M: prost::Message + prost::Name,
{
    let full_name = M::full_name();
    let pool = DESCRIPTOR_POOL
        .as_ref()
        .map_err(|error| JsonError::DescriptorSet(error.to_string()))?;
    let descriptor = pool
        .get_message_by_name(&full_name)
        .ok_or_else(|| JsonError::UnknownMessage(full_name.clone()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(
        |source| JsonError::Decode {
            message: full_name.clone(),
            source,
        },
    )?;
    serde_json::to_value(&dynamic).map_err(|source| JsonError::Serialize {
        message: full_name,
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::proto;

    fn sample_response() -> proto::ListClustersResponse {
        proto::ListClustersResponse {
            clusters: vec![proto::Cluster {
                id: "0190b6a4-0000-7000-8000-000000000001".to_owned(),
                name: "prod".to_owned(),
                labels: HashMap::from([("env".to_owned(), "prod".to_owned())]),
                nodes: vec![proto::Node {
                    id: "node-a".to_owned(),
                    address: "http://10.0.0.1:7070".to_owned(),
                    datacenter: "dc1".to_owned(),
                    agent_version: "0.1.0".to_owned(),
                    data_paths: vec![proto::DataPath {
                        path: "/var/lib/db".to_owned(),
                        free_bytes: 1 << 40,
                        total_bytes: 2 << 40,
                    }],
                    ..Default::default()
                }],
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                update_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 500_000_000,
                }),
            }],
            next_page_token: "page-2".to_owned(),
        }
    }

    #[test]
    fn to_json_uses_camel_case_and_rfc3339_timestamps() {
        let value = to_json(&sample_response()).expect("render ListClustersResponse");
        assert_eq!(value["nextPageToken"], json!("page-2"));
        let cluster = &value["clusters"][0];
        assert_eq!(cluster["createTime"], json!("2023-11-14T22:13:20Z"));
        assert_eq!(cluster["updateTime"], json!("2023-11-14T22:13:20.500Z"));
        assert_eq!(cluster["labels"], json!({ "env": "prod" }));
        let node = &cluster["nodes"][0];
        assert_eq!(node["agentVersion"], json!("0.1.0"));
        // uint64 is a string in proto3 JSON; default fields (rack, hostname) are left out.
        assert_eq!(node["dataPaths"][0]["freeBytes"], json!("1099511627776"));
        assert!(node.get("rack").is_none());
        assert!(node.get("agent_version").is_none());
    }

    #[test]
    fn to_json_renders_enums_by_name() {
        let status = proto::NodeStatus {
            node_id: "node-a".to_owned(),
            health: proto::NodeHealth::Unreachable as i32,
            ..Default::default()
        };
        let value = to_json(&status).expect("render NodeStatus");
        assert_eq!(value["health"], json!("NODE_HEALTH_UNREACHABLE"));
        assert_eq!(value["nodeId"], json!("node-a"));
    }

    #[test]
    fn to_json_of_an_empty_message_is_an_empty_object() {
        let value = to_json(&proto::DeleteClusterResponse {}).expect("render empty message");
        assert_eq!(value, json!({}));
    }
}
