//! The extractors every route reads its input with, so that every input is held to one contract:
//!
//! - [`Json`]: a JSON body whose objects are objects (a JSON array is never taken for a struct, at any depth),
//!   with no U+0000 in any string or key; `Content-Type` must be JSON (415), the size is the route's limit (413);
//! - [`OptionalJson`]: the same for a body that may be empty (reviews);
//! - [`Query`]: a query string with no U+0000 in any name or value;
//! - [`Path`]: path parameters with no U+0000 (after percent-decoding).
//!
//! NUL is refused because PostgreSQL cannot store it in text (SQLite can), so it must never reach SQL: both
//! backends refuse it here the same way, with 422 `invalid_field` naming the field (a body field by its dotted
//! path, as `diff.patch` or `rules[0].description`; a parameter by its name). A body of the wrong shape (not JSON,
//! an array for an object, a wrong type, an unknown or missing field) is 400 `invalid_request`; a value its type
//! refuses (a negative count, a malformed CIDR, an unknown enum value) is 422 `invalid_field` naming it.

use std::fmt;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::Value;

use crate::{Problem, ProblemCode};

/// A JSON body, checked as the module says. The size limit is the route's `web::JsonConfig`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Json<T> {
    /// The body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // actix-web's extractor reads the body (Content-Type, the size limit, malformed JSON: `problem::json_error`).
        let value = web::Json::<UniqueKeys>::from_request(request, payload);
        Box::pin(async move {
            let UniqueKeys(value) = value.await?.into_inner();
            Ok(Json(from_value(&value)?))
        })
    }
}

/// The largest body [`OptionalJson`] reads.
pub const OPTIONAL_BODY_LIMIT: usize = 64 * 1024;

/// A body that may be empty (or only whitespace, or JSON `null`): `value` is `None` then. Otherwise it is JSON as for [`Json`],
/// at most [`OPTIONAL_BODY_LIMIT`] bytes. `raw` is the body as sent.
#[derive(Debug)]
pub struct OptionalJson<T> {
    /// The body, when there was one.
    pub value: Option<T>,
    /// The bytes sent.
    pub raw: web::Bytes,
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let too_large = || {
            Problem::new(ProblemCode::PayloadTooLarge, "Body too large")
                .detail(format!("This body has at most {} KiB.", OPTIONAL_BODY_LIMIT / 1024))
        };
        let declared = request
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let json = is_json(request);
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|length| length > OPTIONAL_BODY_LIMIT) {
                return Err(too_large().into());
            }
            let mut raw = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk =
                    chunk.map_err(|error| Problem::invalid_request("Invalid request body", error.to_string()))?;
                if raw.len() + chunk.len() > OPTIONAL_BODY_LIMIT {
                    return Err(too_large().into());
                }
                raw.extend_from_slice(&chunk);
            }
            let raw = raw.freeze();
            if raw.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson { value: None, raw });
            }
            if !json {
                return Err(not_json().into());
            }
            let UniqueKeys(value) = serde_json::from_slice(&raw)
                .map_err(|error| Problem::invalid_request("Invalid request body", error.to_string()))?;
            if value.is_null() {
                // `null` says "no body" as an empty body does.
                return Ok(OptionalJson { value: None, raw });
            }
            Ok(OptionalJson { value: Some(from_value(&value)?), raw })
        })
    }
}

/// A JSON value in which no object repeats a key (`serde_json::Value` would keep the last one silently, and the
/// struct the body is for would never know).
struct UniqueKeys(Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0).min(1024));
        while let Some(UniqueKeys(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut map = serde_json::Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
            let UniqueKeys(value) = entries.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Whether the request says its body is JSON (`application/json` or `*/*+json`), as `web::Json` requires.
fn is_json(request: &HttpRequest) -> bool {
    match request.mime_type() {
        Ok(Some(mime)) => mime.subtype() == "json" || mime.suffix().is_some_and(|suffix| suffix == "json"),
        _ => false,
    }
}

fn not_json() -> Problem {
    Problem::new(ProblemCode::UnsupportedMediaType, "Not JSON")
        .detail("The body must be JSON: send Content-Type: application/json.")
}

/// A JSON value as `T`, checked as the module says.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Problem> {
    let mut path = String::new();
    if let Some(field) = nul_in(value, &mut path) {
        return Err(nul_problem(field));
    }
    T::deserialize(Strict { value, path: String::new() }).map_err(BodyError::into_problem)
}

fn nul_problem(field: String) -> Problem {
    Problem::invalid_field(field, "Text must not contain NUL characters (U+0000).")
}

/// The path of the first string or key in `value` that holds U+0000.
fn nul_in(value: &Value, path: &mut String) -> Option<String> {
    match value {
        Value::String(text) if text.contains('\0') => Some(path.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let length = path.len();
            path.push_str(&format!("[{index}]"));
            let found = nul_in(item, path);
            path.truncate(length);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let length = path.len();
            push_key(path, &key.replace('\0', "\\u0000"));
            let found = if key.contains('\0') { Some(path.clone()) } else { nul_in(item, path) };
            path.truncate(length);
            found
        }),
        _ => None,
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Why a body did not deserialize: its shape (400) or a value (422), where.
#[derive(Debug)]
struct BodyError {
    value: bool,
    path: Option<String>,
    message: String,
}

impl BodyError {
    fn shape(message: String) -> Self {
        Self { value: false, path: None, message }
    }

    fn value(message: String) -> Self {
        Self { value: true, path: None, message }
    }

    /// Places the error at `path`, unless a deeper value placed it already.
    fn at(mut self, path: &str) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_string());
        }
        self
    }

    fn into_problem(self) -> Problem {
        let path = self.path.filter(|path| !path.is_empty());
        if self.value {
            let field = path.unwrap_or_else(|| "body".into());
            Problem::invalid_field(field.clone(), format!("{field}: {}", self.message))
        } else {
            let detail = match &path {
                Some(path) => format!("{path}: {}", self.message),
                None => self.message,
            };
            let problem = Problem::invalid_request("Invalid request body", detail);
            match path {
                Some(path) => problem.field(path),
                None => problem,
            }
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BodyError {}

impl de::Error for BodyError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        // What a type's own parsing refused (a CIDR, say): a value.
        Self::value(message.to_string())
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::shape(format!("invalid type: {unexpected}, expected {expected}"))
    }

    fn invalid_value(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::value(format!("invalid value: {unexpected}, expected {expected}"))
    }

    fn invalid_length(length: usize, expected: &dyn de::Expected) -> Self {
        Self::shape(format!("invalid length {length}, expected {expected}"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::value(format!("unknown value `{variant}`, expected one of {}", expected.join(", ")))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::shape(format!("unknown field `{field}`, expected one of {}", expected.join(", ")))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::shape(format!("missing field `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::shape(format!("duplicate field `{field}`"))
    }
}

/// A deserializer over a parsed JSON value that refuses an array where a struct belongs (serde's derive would
/// otherwise take `["x@example.com", "member"]` for `{"email": …, "role": …}`), and knows where it is.
struct Strict<'de> {
    value: &'de Value,
    path: String,
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(value) => de::Unexpected::Bool(*value),
        Value::Number(number) => match (number.as_u64(), number.as_i64()) {
            (Some(value), _) => de::Unexpected::Unsigned(value),
            (None, Some(value)) => de::Unexpected::Signed(value),
            _ => de::Unexpected::Float(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => de::Unexpected::Str(text),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

impl<'de> de::Deserializer<'de> for Strict<'de> {
    type Error = BodyError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BodyError> {
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(value) => visitor.visit_bool(*value),
            Value::Number(number) => match (number.as_u64(), number.as_i64()) {
                (Some(value), _) => visitor.visit_u64(value),
                (None, Some(value)) => visitor.visit_i64(value),
                _ => visitor.visit_f64(number.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(text) => visitor.visit_borrowed_str(text),
            Value::Array(items) => visitor.visit_seq(Seq { items: items.iter().enumerate(), path: &self.path }),
            Value::Object(map) => visitor.visit_map(Map { entries: map.iter(), next: None, path: &self.path }),
        };
        result.map_err(|error| error.at(&self.path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BodyError> {
        if self.value.is_null() {
            visitor.visit_none()
        } else {
            let path = self.path.clone();
            visitor.visit_some(self).map_err(|error| error.at(&path))
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BodyError> {
        if self.value.is_object() {
            self.deserialize_any(visitor)
        } else {
            Err(<BodyError as de::Error>::invalid_type(unexpected(self.value), &visitor).at(&self.path))
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BodyError> {
        match self.value {
            Value::String(text) => visitor
                .visit_enum(IntoDeserializer::<BodyError>::into_deserializer(text.as_str()))
                .map_err(|error| error.at(&self.path)),
            other => Err(<BodyError as de::Error>::invalid_type(unexpected(other), &visitor).at(&self.path)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, BodyError> {
        let path = self.path.clone();
        visitor.visit_newtype_struct(self).map_err(|error| error.at(&path))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq
        tuple tuple_struct map identifier ignored_any
    }
}

struct Seq<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    path: &'p str,
}

impl<'de> de::SeqAccess<'de> for Seq<'de, '_> {
    type Error = BodyError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, BodyError> {
        let Some((index, value)) = self.items.next() else { return Ok(None) };
        let path = format!("{}[{index}]", self.path);
        seed.deserialize(Strict { value, path: path.clone() }).map(Some).map_err(|error| error.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'de, 'p> {
    entries: serde_json::map::Iter<'de>,
    next: Option<(&'de String, &'de Value)>,
    path: &'p str,
}

impl<'de> de::MapAccess<'de> for Map<'de, '_> {
    type Error = BodyError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, BodyError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.next = Some((key, value));
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, BodyError> {
        let Some((key, value)) = self.next.take() else {
            return Err(BodyError::shape("a value without a key".into()));
        };
        let mut path = self.path.to_string();
        push_key(&mut path, key);
        seed.deserialize(Strict { value, path: path.clone() }).map_err(|error| error.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// The most characters of one query parameter's value.
pub const MAX_QUERY_VALUE_CHARS: usize = 1024;

/// The query string as name and value pairs (percent-decoded); 400 when it does not parse, 422 naming the
/// parameter when a name or value holds U+0000.
pub(crate) fn query_pairs(request: &HttpRequest) -> Result<Vec<(String, String)>, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(request.query_string())
        .map_err(|error| Problem::invalid_request("Invalid query string", error.to_string()))?;
    if let Some((name, _)) = pairs.iter().find(|(name, value)| name.contains('\0') || value.contains('\0')) {
        return Err(nul_problem(name.replace('\0', "\\u0000")));
    }
    // No parameter is text of several lines: a control character is a mistake or an attack, refused by name.
    if let Some((name, _)) = pairs.iter().find(|(_, value)| value.chars().any(char::is_control)) {
        return Err(Problem::invalid_field(name.clone(), format!("{name} holds a control character")));
    }
    if let Some((name, _)) = pairs.iter().find(|(_, value)| value.chars().count() > MAX_QUERY_VALUE_CHARS) {
        return Err(Problem::invalid_field(
            name.clone(),
            format!("{name} has at most {MAX_QUERY_VALUE_CHARS} characters"),
        ));
    }
    // A parameter given empty counts as absent, on every route; but `limit`, a number, is refused empty.
    Ok(pairs.into_iter().filter(|(name, value)| !value.is_empty() || name == "limit").collect())
}

/// Query parameters as `T` (400 `invalid_request` when they are not of its shape: an unknown or repeated
/// parameter), none holding U+0000.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> std::ops::Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Query<T> {
    /// The parameters.
    pub fn into_inner(self) -> T {
        self.0
    }
}

pub(crate) fn query_as<T: DeserializeOwned>(pairs: &[(String, String)]) -> Result<T, Problem> {
    let encoded = serde_urlencoded::to_string(pairs).map_err(|_| Problem::internal())?;
    serde_urlencoded::from_str(&encoded)
        .map_err(|error| Problem::invalid_request("Invalid query string", error.to_string()))
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(query_pairs(request).and_then(|pairs| query_as(&pairs)).map(Query).map_err(Into::into))
    }
}

/// Path parameters as `T`, none holding U+0000 (422 naming it).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T> std::ops::Deref for Path<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Path<T> {
    /// The parameters.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Path<T> {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        std::future::ready(path_params(request).and_then(|()| {
            let inner = web::Path::<T>::from_request(request, payload).into_inner()?;
            Ok(Path(inner.into_inner()))
        }))
    }
}

/// Refuses a parameter read some other way (the relay's WebSocket handshake reads its path itself) that holds
/// U+0000, raw or percent-encoded: 422 `invalid_field` naming it.
pub fn refuse_nul(field: &str, raw: &str) -> Result<(), Problem> {
    if raw.contains('\0') || percent_decodes_to_nul(raw) {
        Err(nul_problem(field.to_string()))
    } else {
        Ok(())
    }
}

/// Refuses path parameters that hold U+0000, however it was encoded.
fn path_params(request: &HttpRequest) -> Result<(), actix_web::Error> {
    for (name, raw) in request.match_info().iter() {
        refuse_nul(name, raw)?;
    }
    Ok(())
}

/// Whether `raw` still holds a percent-encoded NUL (`%00`) that a later decoding would turn into U+0000.
fn percent_decodes_to_nul(raw: &str) -> bool {
    raw.as_bytes().windows(3).any(|window| window == b"%00")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: u32,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        One,
    }

    fn parse(value: Value) -> Result<Outer, Problem> {
        from_value(&value)
    }

    fn refusal(value: Value) -> (u16, Option<String>) {
        let problem = parse(value).unwrap_err();
        (problem.status().as_u16(), problem.field_name().map(str::to_string))
    }

    #[test]
    fn objects_of_the_right_shape_pass() {
        let outer =
            parse(json!({"name": "a", "inner": {"count": 1}, "list": [{"count": 2, "note": null}], "kind": "one"}));
        assert_eq!(
            outer.unwrap(),
            Outer {
                name: "a".into(),
                inner: Inner { count: 1, note: None },
                list: vec![Inner { count: 2, note: None }],
                kind: Some(Kind::One),
            }
        );
    }

    #[test]
    fn arrays_are_never_structs() {
        assert_eq!(refusal(json!(["a", {"count": 1}])), (400, None));
        assert_eq!(refusal(json!({"name": "a", "inner": [1]})), (400, Some("inner".into())));
        assert_eq!(refusal(json!({"name": "a", "inner": {"count": 1}, "list": [[3]]})), (400, Some("list[0]".into())));
        assert_eq!(refusal(json!("text")), (400, None));
    }

    #[test]
    fn shapes_are_400_and_values_422_naming_the_field() {
        assert_eq!(refusal(json!({"name": "a"})), (400, None));
        assert_eq!(refusal(json!({"name": "a", "inner": {"count": 1}, "more": 1})), (400, None));
        assert_eq!(refusal(json!({"name": 5, "inner": {"count": 1}})), (400, Some("name".into())));
        assert_eq!(refusal(json!({"name": "a", "inner": {"count": -1}})), (422, Some("inner.count".into())));
        assert_eq!(refusal(json!({"name": "a", "inner": {"count": 1}, "kind": "two"})), (422, Some("kind".into())));
    }

    #[test]
    fn nul_is_refused_anywhere_naming_where() {
        assert_eq!(refusal(json!({"name": "a\u{0}b", "inner": {"count": 1}})), (422, Some("name".into())));
        let nested = json!({"name": "a", "inner": {"count": 1}, "list": [{"count": 1}, {"count": 1, "note": "\u{0}"}]});
        assert_eq!(refusal(nested), (422, Some("list[1].note".into())));
        assert_eq!(refusal(json!({"name": "a", "inner": {"count": 1}, "x\u{0}": 1})), (422, Some("x\\u0000".into())));
        // Other control characters are the fields' own business.
        assert!(parse(json!({"name": "a\u{7}", "inner": {"count": 1}})).is_ok());
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        for body in [r#"{"name": "a", "name": "b"}"#, r#"{"inner": {"count": 1, "count": 2}}"#, r#"[{"a": 1, "a": 1}]"#]
        {
            assert!(serde_json::from_str::<UniqueKeys>(body).is_err(), "{body}");
        }
        let UniqueKeys(value) = serde_json::from_str(r#"{"a": [1, -2, 1.5, "x", null, true], "b": {"a": 1}}"#).unwrap();
        assert_eq!(value, json!({"a": [1, -2, 1.5, "x", null, true], "b": {"a": 1}}));
    }

    #[test]
    fn percent_encoded_nul_is_seen() {
        assert!(percent_decodes_to_nul("a%00b"));
        assert!(!percent_decodes_to_nul("a%2500b"));
    }
}

/// A whole number however JSON writes it: `2`, `2.0` or `2e0` are one value (JSON Schema's `integer`), so a client
/// that writes every number as a float is understood. A fraction, a negative number or one past `T`'s range is
/// refused, naming the field (`#[serde(deserialize_with = "crate::extract::whole")]`).
pub fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    whole_in(&<serde_json::Number as serde::Deserialize>::deserialize(deserializer)?).map_err(de::Error::custom)
}

/// [`whole`] for an optional field (with `#[serde(default)]`): absent or `null` is `None`.
pub fn whole_option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    let number = <Option<serde_json::Number> as serde::Deserialize>::deserialize(deserializer)?;
    number.map(|number| whole_in(&number).map_err(de::Error::custom)).transpose()
}

/// [`whole`] for a list of whole numbers.
pub fn whole_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    let numbers = <Vec<serde_json::Number> as serde::Deserialize>::deserialize(deserializer)?;
    numbers.iter().map(|number| whole_in(number).map_err(de::Error::custom)).collect()
}

/// `number` as a `T`: exact as an integer, and as a float up to 2^53 (beyond it a float no longer names one
/// integer).
fn whole_in<T: TryFrom<u64>>(number: &serde_json::Number) -> Result<T, String> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let value = number.as_u64().or_else(|| {
        // Whole and within 0..=2^53, so the conversion is exact.
        number.as_f64().filter(|float| float.fract() == 0.0 && (0.0..=EXACT).contains(float)).map(|float| float as u64)
    });
    value
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| format!("expected a whole number in range, found {number}"))
}

#[cfg(test)]
mod whole_tests {
    #![allow(clippy::unwrap_used)]

    #[derive(Debug, serde::Deserialize)]
    struct Counts {
        #[serde(deserialize_with = "super::whole")]
        one: u32,
        #[serde(deserialize_with = "super::whole_list")]
        many: Vec<u16>,
    }

    #[test]
    fn whole_numbers_are_read_in_any_notation_and_fractions_are_refused() {
        let counts: Counts = serde_json::from_str(r#"{"one": 2.0, "many": [1, 3e2, 65535.0]}"#).unwrap();
        assert_eq!((counts.one, counts.many), (2, vec![1, 300, 65535]));
        for bad in [
            r#"{"one": 2.5, "many": []}"#,
            r#"{"one": -1, "many": []}"#,
            r#"{"one": 1, "many": [65536]}"#,
            r#"{"one": 4294967296, "many": []}"#,
            r#"{"one": "2", "many": []}"#,
            r#"{"one": 1e300, "many": []}"#,
        ] {
            assert!(serde_json::from_str::<Counts>(bad).is_err(), "{bad}");
        }
    }
}
