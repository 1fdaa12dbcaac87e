//! `GET /openapi/v2`: the Swagger 2.0 document, in JSON or in the protobuf form kubectl and
//! Helm ask for (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
//!
//! kubectl reads its definitions (client-side validation, `explain
//! --output=plaintext-openapiv2`) and its operations' `consumes` by GVK (which patch type
//! `apply` sends when OpenAPI v3 gives no answer).
//!
//! The protobuf form is gnostic's `openapi.v2.Document`. No crate carries those messages,
//! so the subset this server writes is declared here with gnostic's field numbers; vendor
//! extensions and `default`/`enum` values travel as `Any { yaml }`, as gnostic writes them
//! (JSON text is YAML).

use super::definitions;
use serde_json::{json, Map, Value};

/// The document, from the v3 paths and the definitions they use.
pub fn document(paths_v3: &Map<String, Value>, defs: Map<String, Value>, version: &str) -> Value {
    let mut paths = Map::new();
    for (path, item) in paths_v3 {
        let Some(item) = item.as_object() else {
            continue;
        };
        let mut out = Map::new();
        for (key, value) in item {
            if key == "parameters" {
                out.insert(key.clone(), parameters(value));
            } else {
                out.insert(key.clone(), operation(value));
            }
        }
        paths.insert(path.clone(), Value::Object(out));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "definitions": defs,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    })
}

fn v2_ref(v: &Value) -> Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => json!({"$ref": r.replacen("#/components/schemas/", "#/definitions/", 1)}),
        None => v.clone(),
    }
}

/// v3 parameters (`schema: {type}`) as v2 ones (`type` beside `in`).
fn parameters(v3: &Value) -> Value {
    let list = v3.as_array().map(Vec::as_slice).unwrap_or(&[]);
    Value::Array(
        list.iter()
            .map(|p| {
                let mut out = p.clone();
                if let Some(o) = out.as_object_mut() {
                    if let Some(Value::Object(schema)) = o.remove("schema") {
                        for (k, v) in schema {
                            o.insert(k, v);
                        }
                    }
                }
                out
            })
            .collect(),
    )
}

fn operation(v3: &Value) -> Value {
    let Some(op) = v3.as_object() else {
        return v3.clone();
    };
    let mut out = Map::new();
    for (k, v) in op {
        match k.as_str() {
            "parameters" => {}
            "requestBody" => {}
            "responses" => {
                let mut responses = Map::new();
                for (code, r) in v.as_object().into_iter().flatten() {
                    let mut resp = json!({"description": r["description"]});
                    if let Some(schema) = r["content"]
                        .as_object()
                        .and_then(|c| c.values().next())
                        .map(|m| &m["schema"])
                    {
                        resp["schema"] = v2_ref(schema);
                    }
                    responses.insert(code.clone(), resp);
                }
                out.insert(k.clone(), Value::Object(responses));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    let mut params = parameters(&op.get("parameters").cloned().unwrap_or(json!([])));
    let mut produces = vec![json!("application/json"), json!("application/yaml")];
    if let Some(body) = op.get("requestBody") {
        let content = body["content"].as_object();
        let consumes: Vec<Value> = content
            .into_iter()
            .flatten()
            .map(|(t, _)| json!(t))
            .collect();
        let schema = content
            .and_then(|c| c.values().next())
            .map(|m| v2_ref(&m["schema"]))
            .unwrap_or(json!({}));
        if let Some(list) = params.as_array_mut() {
            list.insert(
                0,
                json!({"name": "body", "in": "body", "required": body["required"].as_bool().unwrap_or(false), "schema": schema}),
            );
        }
        out.insert("consumes".into(), Value::Array(consumes));
    } else {
        out.insert("consumes".into(), json!(["*/*"]));
    }
    if op.get("x-kubernetes-action").and_then(Value::as_str) == Some("list") {
        produces.push(json!("application/json;stream=watch"));
    }
    out.insert("produces".into(), Value::Array(produces));
    out.insert("schemes".into(), json!(["https"]));
    out.insert("parameters".into(), params);
    Value::Object(out)
}

/// Every definition the v2 document holds: the built-in ones and the custom resources'.
pub fn all_definitions() -> Map<String, Value> {
    let mut defs = definitions::builtin();
    for c in definitions::custom() {
        definitions::custom_definitions(&c, &mut defs);
    }
    defs
}

// ---------------------------------------------------------------------------------------
// gnostic's openapi.v2 messages (the subset written here).

mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(string, repeated, tag = "5")]
        pub schemes: Vec<String>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        pub definitions: Option<Definitions>,
        #[prost(message, repeated, tag = "16")]
        pub vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Definitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedSchema {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Schema {
        #[prost(string, tag = "1")]
        pub r#ref: String,
        #[prost(string, tag = "2")]
        pub format: String,
        #[prost(string, tag = "3")]
        pub title: String,
        #[prost(string, tag = "4")]
        pub description: String,
        #[prost(message, optional, tag = "5")]
        pub default: Option<Any>,
        #[prost(double, tag = "7")]
        pub maximum: f64,
        #[prost(double, tag = "9")]
        pub minimum: f64,
        #[prost(int64, tag = "11")]
        pub max_length: i64,
        #[prost(int64, tag = "12")]
        pub min_length: i64,
        #[prost(string, tag = "13")]
        pub pattern: String,
        #[prost(int64, tag = "14")]
        pub max_items: i64,
        #[prost(int64, tag = "15")]
        pub min_items: i64,
        #[prost(string, repeated, tag = "19")]
        pub required: Vec<String>,
        #[prost(message, repeated, tag = "20")]
        pub r#enum: Vec<Any>,
        #[prost(message, optional, boxed, tag = "21")]
        pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
        #[prost(message, optional, tag = "22")]
        pub r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        pub items: Option<ItemsItem>,
        #[prost(message, repeated, tag = "24")]
        pub all_of: Vec<Schema>,
        #[prost(message, optional, tag = "25")]
        pub properties: Option<Properties>,
        #[prost(bool, tag = "27")]
        pub read_only: bool,
        #[prost(message, repeated, tag = "31")]
        pub vendor_extension: Vec<NamedAny>,
    }

    /// gnostic's `oneof { Schema schema = 1; bool boolean = 2; }`: one of the two is set.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AdditionalPropertiesItem {
        #[prost(message, optional, tag = "1")]
        pub schema: Option<Schema>,
        #[prost(bool, optional, tag = "2")]
        pub boolean: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        pub schema: Vec<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Properties {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "3")]
        pub put: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        pub post: Option<Operation>,
        #[prost(message, optional, tag = "5")]
        pub delete: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
        #[prost(message, repeated, tag = "9")]
        pub parameters: Vec<ParametersItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Operation {
        #[prost(string, repeated, tag = "1")]
        pub tags: Vec<String>,
        #[prost(string, tag = "3")]
        pub description: String,
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(string, repeated, tag = "6")]
        pub produces: Vec<String>,
        #[prost(string, repeated, tag = "7")]
        pub consumes: Vec<String>,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, optional, tag = "9")]
        pub responses: Option<Responses>,
        #[prost(string, repeated, tag = "10")]
        pub schemes: Vec<String>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }

    /// `oneof { Parameter parameter = 1; JsonReference json_reference = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }

    /// `oneof { BodyParameter body_parameter = 1; NonBodyParameter non_body_parameter = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "1")]
        pub body_parameter: Option<BodyParameter>,
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BodyParameter {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub r#in: String,
        #[prost(bool, tag = "4")]
        pub required: bool,
        #[prost(message, optional, tag = "5")]
        pub schema: Option<Schema>,
    }

    /// `oneof { header = 1; form_data = 2; query = 3; path = 4 }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameter>,
        #[prost(message, optional, tag = "4")]
        pub path_parameter_sub_schema: Option<PathParameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryParameter {
        #[prost(bool, tag = "1")]
        pub required: bool,
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "3")]
        pub description: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
        #[prost(bool, tag = "20")]
        pub unique_items: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathParameter {
        #[prost(bool, tag = "1")]
        pub required: bool,
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "3")]
        pub description: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "5")]
        pub r#type: String,
        #[prost(bool, tag = "19")]
        pub unique_items: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Responses {
        #[prost(message, repeated, tag = "1")]
        pub response_code: Vec<NamedResponseValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedResponseValue {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<ResponseValue>,
    }

    /// `oneof { Response response = 1; JsonReference json_reference = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseValue {
        #[prost(message, optional, tag = "1")]
        pub response: Option<Response>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(message, optional, tag = "2")]
        pub schema: Option<SchemaItem>,
    }

    /// `oneof { Schema schema = 1; FileSchema file_schema = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SchemaItem {
        #[prost(message, optional, tag = "1")]
        pub schema: Option<Schema>,
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn any(v: &Value) -> pb::Any {
    pb::Any {
        yaml: v.to_string(),
    }
}

fn extensions(v: &Value) -> Vec<pb::NamedAny> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, x)| pb::NamedAny {
            name: k.clone(),
            value: Some(any(x)),
        })
        .collect()
}

fn named_schemas(v: Option<&Value>) -> Vec<pb::NamedSchema> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, s)| pb::NamedSchema {
            name: name.clone(),
            value: Some(schema(s)),
        })
        .collect()
}

fn schema(v: &Value) -> pb::Schema {
    let num = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    let types = match v.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(_)) => strings(v, "type"),
        _ => Vec::new(),
    };
    pb::Schema {
        r#ref: text(v, "$ref"),
        format: text(v, "format"),
        title: text(v, "title"),
        description: text(v, "description"),
        default: v.get("default").map(any),
        maximum: num("maximum"),
        minimum: num("minimum"),
        max_length: int("maxLength"),
        min_length: int("minLength"),
        pattern: text(v, "pattern"),
        max_items: int("maxItems"),
        min_items: int("minItems"),
        required: strings(v, "required"),
        r#enum: v
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(any)
            .collect(),
        additional_properties: match v.get("additionalProperties") {
            Some(Value::Bool(b)) => Some(Box::new(pb::AdditionalPropertiesItem {
                schema: None,
                boolean: Some(*b),
            })),
            Some(s @ Value::Object(_)) => Some(Box::new(pb::AdditionalPropertiesItem {
                schema: Some(schema(s)),
                boolean: None,
            })),
            _ => None,
        },
        r#type: (!types.is_empty()).then_some(pb::TypeItem { value: types }),
        items: match v.get("items") {
            Some(Value::Array(a)) => Some(pb::ItemsItem {
                schema: a.iter().map(schema).collect(),
            }),
            Some(s @ Value::Object(_)) => Some(pb::ItemsItem {
                schema: vec![schema(s)],
            }),
            _ => None,
        },
        all_of: v
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(schema)
            .collect(),
        properties: v.get("properties").map(|p| pb::Properties {
            additional_properties: named_schemas(Some(p)),
        }),
        read_only: v.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
        vendor_extension: extensions(v),
    }
}

fn parameter(p: &Value) -> pb::ParametersItem {
    let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
    let unique = p
        .get("uniqueItems")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let non_body = |query, path| pb::NonBodyParameter {
        query_parameter_sub_schema: query,
        path_parameter_sub_schema: path,
    };
    let parameter = match p.get("in").and_then(Value::as_str) {
        Some("body") => pb::Parameter {
            body_parameter: Some(pb::BodyParameter {
                description: text(p, "description"),
                name: text(p, "name"),
                r#in: "body".into(),
                required,
                schema: p.get("schema").map(schema),
            }),
            non_body_parameter: None,
        },
        Some("path") => pb::Parameter {
            body_parameter: None,
            non_body_parameter: Some(non_body(
                None,
                Some(pb::PathParameter {
                    required,
                    r#in: "path".into(),
                    description: text(p, "description"),
                    name: text(p, "name"),
                    r#type: text(p, "type"),
                    unique_items: unique,
                }),
            )),
        },
        _ => pb::Parameter {
            body_parameter: None,
            non_body_parameter: Some(non_body(
                Some(pb::QueryParameter {
                    required,
                    r#in: "query".into(),
                    description: text(p, "description"),
                    name: text(p, "name"),
                    r#type: text(p, "type"),
                    unique_items: unique,
                }),
                None,
            )),
        },
    };
    pb::ParametersItem {
        parameter: Some(parameter),
    }
}

fn parameters_pb(v: Option<&Value>) -> Vec<pb::ParametersItem> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(parameter)
        .collect()
}

fn operation_pb(op: Option<&Value>) -> Option<pb::Operation> {
    let op = op?;
    Some(pb::Operation {
        tags: strings(op, "tags"),
        description: text(op, "description"),
        operation_id: text(op, "operationId"),
        produces: strings(op, "produces"),
        consumes: strings(op, "consumes"),
        parameters: parameters_pb(op.get("parameters")),
        responses: Some(pb::Responses {
            response_code: op
                .get("responses")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(code, r)| pb::NamedResponseValue {
                    name: code.clone(),
                    value: Some(pb::ResponseValue {
                        response: Some(pb::Response {
                            description: text(r, "description"),
                            schema: r.get("schema").map(|s| pb::SchemaItem {
                                schema: Some(schema(s)),
                            }),
                        }),
                    }),
                })
                .collect(),
        }),
        schemes: strings(op, "schemes"),
        vendor_extension: extensions(op),
    })
}

/// The document in gnostic's protobuf encoding.
pub fn protobuf(doc: &Value) -> Vec<u8> {
    use prost::Message as _;
    let paths = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, item)| pb::NamedPathItem {
            name: name.clone(),
            value: Some(pb::PathItem {
                get: operation_pb(item.get("get")),
                put: operation_pb(item.get("put")),
                post: operation_pb(item.get("post")),
                delete: operation_pb(item.get("delete")),
                patch: operation_pb(item.get("patch")),
                parameters: parameters_pb(item.get("parameters")),
            }),
        })
        .collect();
    pb::Document {
        swagger: text(doc, "swagger"),
        info: Some(pb::Info {
            title: text(&doc["info"], "title"),
            version: text(&doc["info"], "version"),
        }),
        schemes: vec!["https".into()],
        paths: Some(pb::Paths { path: paths }),
        definitions: Some(pb::Definitions {
            additional_properties: named_schemas(doc.get("definitions")),
        }),
        vendor_extension: extensions(doc),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn protobuf_round_trips_what_kubectl_reads() {
        let defs = definitions::closure(
            &definitions::builtin(),
            &["io.k8s.api.apps.v1.Deployment".to_string()],
        );
        let doc = document(&Map::new(), defs, "v1.32.0");
        let bytes = protobuf(&doc);
        let back = pb::Document::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.swagger, "2.0");
        let defs = back.definitions.unwrap().additional_properties;
        let deployment = defs
            .iter()
            .find(|d| d.name == "io.k8s.api.apps.v1.Deployment")
            .and_then(|d| d.value.clone())
            .unwrap();
        let gvk = deployment
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-group-version-kind")
            .unwrap();
        let yaml: Value = serde_json::from_str(&gvk.value.as_ref().unwrap().yaml).unwrap();
        assert_eq!(yaml[0]["kind"], "Deployment");
        let props = deployment.properties.unwrap().additional_properties;
        let spec = props.iter().find(|p| p.name == "spec").unwrap();
        assert_eq!(
            spec.value.as_ref().unwrap().r#ref,
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        let pod_spec = defs
            .iter()
            .find(|d| d.name == "io.k8s.api.core.v1.PodSpec")
            .and_then(|d| d.value.clone())
            .unwrap();
        let containers = pod_spec
            .properties
            .unwrap()
            .additional_properties
            .into_iter()
            .find(|p| p.name == "containers")
            .and_then(|p| p.value)
            .unwrap();
        assert_eq!(containers.r#type.unwrap().value, ["array"]);
        assert!(containers
            .vendor_extension
            .iter()
            .any(|e| e.name == "x-kubernetes-patch-merge-key"
                && e.value.as_ref().unwrap().yaml == "\"name\""));
    }

    #[test]
    fn operations_become_v2_operations() {
        let v3 = json!({
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}": {
                "patch": {
                    "operationId": "patchAppsV1NamespacedDeployment",
                    "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                    "requestBody": {"content": {"application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}}, "required": true},
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/io.k8s.api.apps.v1.Deployment"}}}}},
                    "x-kubernetes-action": "patch",
                },
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
            }
        });
        let doc = document(v3.as_object().unwrap(), Map::new(), "v1.32.0");
        let item = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        let patch = &item["patch"];
        assert_eq!(patch["consumes"], json!(["application/merge-patch+json"]));
        assert_eq!(patch["parameters"][0]["in"], "body");
        assert_eq!(
            patch["parameters"][0]["schema"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
        );
        assert_eq!(patch["parameters"][1]["type"], "string");
        assert_eq!(
            patch["responses"]["200"]["schema"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.Deployment"
        );
        assert_eq!(item["parameters"][0]["type"], "string");
        let back = pb::Document::decode(protobuf(&doc).as_slice()).unwrap();
        let op = back.paths.unwrap().path[0]
            .value
            .clone()
            .unwrap()
            .patch
            .unwrap();
        assert_eq!(op.consumes, ["application/merge-patch+json"]);
        assert_eq!(op.operation_id, "patchAppsV1NamespacedDeployment");
    }
}
