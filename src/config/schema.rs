//! The config's JSON Schema (draft 2020-12), generated from the YAML types
//! in `raw`, with their doc comments as descriptions: editors (VS Code with
//! yaml-language-server, IntelliJ) complete and check configs with it.

use super::raw::RawFile;

/// Where the published schema lives; examples point at it.
pub const SCHEMA_ID: &str = "https://lineaged.dev/schema/config.json";

/// The schema of one config file (every section optional in a directory of
/// files; `lineaged check` checks what a schema cannot: references between
/// files, cycles, secrets present).
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<RawFile>();
    let mut value = schema.to_value();
    unwrap_descriptions(&mut value);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("$id".into(), SCHEMA_ID.into());
        obj.insert("title".into(), "lineaged config".into());
        obj.insert(
            "description".into(),
            "A lineaged config file: image lineage, registries, CI backends, policy, \
             notifications. `lineaged check` validates what a schema cannot (references, \
             cycles, secrets)."
                .into(),
        );
    }
    value
}

/// Doc comments are wrapped at 80-odd columns; editors show descriptions
/// as flowing text, so single line breaks become spaces (paragraphs stay).
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(s) if k == "description" => {
                        *s = s
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;

    #[test]
    fn backend_kinds_in_the_schema_are_the_known_kinds() {
        let s = json_schema();
        let kinds = &s["$defs"]["RawBackend"]["properties"]["kind"]["enum"];
        let want: Vec<&str> = BackendKind::ALL.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, &serde_json::json!(want));
    }

    #[test]
    fn unknown_keys_are_refused_and_fields_are_described() {
        let s = json_schema();
        assert_eq!(s["additionalProperties"], false);
        let image = &s["$defs"]["RawImage"];
        assert_eq!(image["additionalProperties"], false);
        assert!(
            image["required"]
                .as_array()
                .unwrap()
                .contains(&"name".into())
        );
        // Every property of every definition has a description.
        let top = "RawFile".to_string();
        let root = std::iter::once((&top, &s));
        for (name, def) in root.chain(s["$defs"].as_object().unwrap()) {
            for (field, prop) in def["properties"].as_object().into_iter().flatten() {
                assert!(
                    prop.get("description").is_some_and(|d| d.is_string()),
                    "{name}.{field} has no description"
                );
            }
        }
    }
}
