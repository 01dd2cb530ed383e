//! The structured-output fields of an OpenAI body: OpenAI's `response_format`, vLLM's
//! `structured_outputs` and its older `guided_json` / `guided_regex` / `guided_choice` /
//! `guided_grammar`. At most one may ask for a constraint; each becomes the wire's
//! `StructuredOutput`, which the router compiles at the edge like any request's
//! ([`crate::prepare`]) and the workers follow token by token.

use lcserve_proto::v1::{self, structured_output::Kind};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Field, RouterError};

/// vLLM's `structured_outputs` object: exactly one member set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StructuredOutputsField {
    pub json: Option<Value>,
    pub regex: Option<String>,
    pub choice: Option<Vec<String>>,
    pub grammar: Option<String>,
    pub json_object: Option<bool>,
}

/// Every structured-output field of a body, as sent.
#[derive(Debug, Default)]
pub(crate) struct StructuredFields {
    pub response_format: Option<Value>,
    pub structured_outputs: Option<StructuredOutputsField>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
}

fn invalid<T>(name: &'static str, reason: impl Into<String>) -> Result<T, RouterError> {
    Err(RouterError::invalid(Field::StructuredOutput(name), reason))
}

impl StructuredFields {
    /// The one constraint asked for, with the name of the field that asked; `None` when no
    /// field asks for one (`response_format: {"type": "text"}` asks for nothing).
    pub fn into_wire(self) -> Result<Option<(v1::StructuredOutput, &'static str)>, RouterError> {
        let Self { response_format, structured_outputs, guided_json, guided_regex, guided_choice, guided_grammar } =
            self;
        let mut asked = Vec::new();
        if let Some(kind) = response_format.filter(|v| !v.is_null()).map(response_format_kind).transpose()?.flatten() {
            asked.push(("response_format", kind));
        }
        if let Some(field) = structured_outputs {
            asked.push(("structured_outputs", structured_outputs_kind(field)?));
        }
        if let Some(schema) = guided_json {
            asked.push(("guided_json", Kind::JsonSchema(schema_text("guided_json", schema)?)));
        }
        asked.extend(guided_regex.map(|regex| ("guided_regex", Kind::Regex(regex))));
        asked.extend(guided_choice.map(|choices| ("guided_choice", Kind::Choice(v1::Choices { choices }))));
        asked.extend(guided_grammar.map(|grammar| ("guided_grammar", Kind::Grammar(grammar))));
        match asked.len() {
            0 => Ok(None),
            1 => Ok(asked.pop().map(|(name, kind)| (v1::StructuredOutput { kind: Some(kind), reasoning: None }, name))),
            _ => {
                let names: Vec<&str> = asked.iter().map(|(name, _)| *name).collect();
                invalid(asked[1].0, format!("only one structured output per request; got {}", names.join(", ")))
            }
        }
    }
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object`, or `json_schema` with its
/// `json_schema.schema`.
fn response_format_kind(value: Value) -> Result<Option<Kind>, RouterError> {
    const NAME: &str = "response_format";
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Kind::JsonObject(true))),
        Some("json_schema") => {
            let schema = value.get("json_schema").and_then(|s| s.get("schema")).cloned();
            let Some(schema) = schema else {
                return invalid(NAME, "json_schema.schema is required for type json_schema");
            };
            Ok(Some(Kind::JsonSchema(schema_text(NAME, schema)?)))
        }
        Some(other) => invalid(NAME, format!("type {other:?} is not text, json_object or json_schema")),
        None => invalid(NAME, "type is required (text, json_object or json_schema)"),
    }
}

fn structured_outputs_kind(field: StructuredOutputsField) -> Result<Kind, RouterError> {
    const NAME: &str = "structured_outputs";
    let StructuredOutputsField { json, regex, choice, grammar, json_object } = field;
    let mut kinds = Vec::new();
    if let Some(schema) = json {
        kinds.push(Kind::JsonSchema(schema_text(NAME, schema)?));
    }
    kinds.extend(regex.map(Kind::Regex));
    kinds.extend(choice.map(|choices| Kind::Choice(v1::Choices { choices })));
    kinds.extend(grammar.map(Kind::Grammar));
    kinds.extend(json_object.filter(|&on| on).map(Kind::JsonObject));
    match kinds.len() {
        1 => Ok(kinds.remove(0)),
        0 => invalid(NAME, "set one of json, regex, choice, grammar or json_object"),
        _ => invalid(NAME, "set only one of json, regex, choice, grammar or json_object"),
    }
}

/// A schema given as a JSON value, or as a string holding one (vLLM accepts both).
fn schema_text(name: &'static str, schema: Value) -> Result<String, RouterError> {
    match schema {
        Value::String(text) => Ok(text),
        Value::Object(_) | Value::Bool(_) => Ok(schema.to_string()),
        other => invalid(name, format!("the schema must be an object, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wire(fields: StructuredFields) -> Result<Option<(Kind, &'static str)>, RouterError> {
        Ok(fields.into_wire()?.map(|(output, name)| (output.kind.expect("kind"), name)))
    }

    fn refused(fields: StructuredFields) -> (Field, String) {
        match fields.into_wire() {
            Err(RouterError::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn each_field_becomes_its_constraint() -> Result<(), RouterError> {
        let schema = json!({"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}});
        let format = |v: Value| StructuredFields { response_format: Some(v), ..Default::default() };
        assert!(wire(format(json!({"type": "text"})))?.is_none());
        assert!(wire(StructuredFields { response_format: Some(Value::Null), ..Default::default() })?.is_none());
        assert_eq!(wire(format(json!({"type": "json_object"})))?, Some((Kind::JsonObject(true), "response_format")));
        let json_schema =
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}});
        // Property order is kept: the output follows it.
        let text = r#"{"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"string"}}}"#;
        assert_eq!(wire(format(json_schema))?, Some((Kind::JsonSchema(text.into()), "response_format")));
        let guided = StructuredFields { guided_json: Some(Value::from(text)), ..Default::default() };
        assert_eq!(wire(guided)?, Some((Kind::JsonSchema(text.into()), "guided_json")));
        let regex = StructuredFields { guided_regex: Some("[a-z]+".into()), ..Default::default() };
        assert_eq!(wire(regex)?, Some((Kind::Regex("[a-z]+".into()), "guided_regex")));
        let choices = vec!["yes".to_string(), "no".into()];
        let choice = StructuredFields { guided_choice: Some(choices.clone()), ..Default::default() };
        assert_eq!(wire(choice)?, Some((Kind::Choice(v1::Choices { choices: choices.clone() }), "guided_choice")));
        let grammar = StructuredFields { guided_grammar: Some("start: \"x\"".into()), ..Default::default() };
        assert_eq!(wire(grammar)?, Some((Kind::Grammar("start: \"x\"".into()), "guided_grammar")));
        let vllm =
            |field: StructuredOutputsField| StructuredFields { structured_outputs: Some(field), ..Default::default() };
        let choice = vllm(StructuredOutputsField { choice: Some(choices.clone()), ..Default::default() });
        assert_eq!(wire(choice)?, Some((Kind::Choice(v1::Choices { choices }), "structured_outputs")));
        let object = vllm(StructuredOutputsField { json_object: Some(true), ..Default::default() });
        assert_eq!(wire(object)?, Some((Kind::JsonObject(true), "structured_outputs")));
        Ok(())
    }

    #[test]
    fn malformed_or_conflicting_fields_are_refused_by_name() {
        let format = |v: Value| StructuredFields { response_format: Some(v), ..Default::default() };
        let (field, reason) = refused(format(json!({"type": "json_schema", "json_schema": {"name": "x"}})));
        assert_eq!((field, reason.contains("json_schema.schema")), (Field::StructuredOutput("response_format"), true));
        assert_eq!(refused(format(json!({"type": "yaml"}))).0, Field::StructuredOutput("response_format"));
        assert_eq!(refused(format(json!({}))).0, Field::StructuredOutput("response_format"));
        let both = StructuredFields {
            response_format: Some(json!({"type": "json_object"})),
            guided_regex: Some("x".into()),
            ..Default::default()
        };
        let (field, reason) = refused(both);
        assert_eq!(field, Field::StructuredOutput("guided_regex"));
        assert!(reason.contains("response_format, guided_regex"), "{reason}");
        let two = StructuredOutputsField { regex: Some("x".into()), grammar: Some("y".into()), ..Default::default() };
        let two = StructuredFields { structured_outputs: Some(two), ..Default::default() };
        assert_eq!(refused(two).0, Field::StructuredOutput("structured_outputs"));
        let number = StructuredFields { guided_json: Some(json!(3)), ..Default::default() };
        assert_eq!(refused(number).0, Field::StructuredOutput("guided_json"));
    }
}
