//! Every CEL rule in the CRDs fits the budget a Kubernetes API server checks when it admits a
//! CRD, and every list and string a rule iterates or measures is bounded.
//!
//! The API server estimates each rule's worst case from the schema: a list without `maxItems`
//! is assumed as long as a 3 MiB request allows, a string without `maxLength` as long as the
//! request itself. A rule over 10,000,000 cost units, or rules adding up to more than
//! 100,000,000 for the CRD (each multiplied by how often it can run), make the CRD be refused.
//! The estimator here follows that model for the CEL the CRDs use (comprehensions, IP and CIDR
//! parsing, string comparison, `has`, `size`); a rule it cannot read fails the test so that a
//! new kind of rule gets a cost model before it reaches a cluster.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use postern_operator::api::crds;

/// The `format` values the Kubernetes API server recognises; it warns about any other.
const KUBERNETES_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "date-time",
    "int32",
    "int64",
    "float",
    "double",
];

/// Largest estimated cost of one rule (`StaticEstimatedCostLimit`).
const RULE_LIMIT: f64 = 10_000_000.0;
/// Largest estimated cost of all rules of a CRD (`StaticEstimatedCRDCostLimit`).
const CRD_LIMIT: f64 = 100_000_000.0;
/// The request size the API server bounds unbounded lists and strings by, less the quotes.
const REQUEST: f64 = 3.0 * 1024.0 * 1024.0 - 2.0;
/// Cost of traversing one byte of a string.
const STRING_TRAVERSAL: f64 = 0.1;

#[test]
fn every_rule_fits_the_api_servers_cost_budget() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let mut total = 0.0;
        for rule in rules(&crd) {
            let estimate = estimate(&rule)
                .unwrap_or_else(|e| panic!("{name}: {} `{}`: {e}", rule.path, rule.text));
            assert!(
                estimate.cost <= RULE_LIMIT,
                "{name}: {} `{}` costs {} (limit {RULE_LIMIT}): bound {}",
                rule.path,
                rule.text,
                estimate.cost,
                estimate.unbounded.join(", ")
            );
            assert!(
                estimate.unbounded.is_empty(),
                "{name}: {} `{}` reads fields without maxItems / maxLength: {}",
                rule.path,
                rule.text,
                estimate.unbounded.join(", ")
            );
            total += estimate.cost * rule.cardinality;
        }
        assert!(total <= CRD_LIMIT, "{name}: rules cost {total} together");
    }
}

#[test]
fn an_unbounded_list_under_a_rule_is_over_budget() {
    let item = JSONSchemaProps {
        type_: Some("string".into()),
        ..Default::default()
    };
    let list = |max_items: Option<i64>, max_length: Option<i64>| JSONSchemaProps {
        type_: Some("array".into()),
        max_items,
        items: Some(JSONSchemaPropsOrArray::Schema(Box::new(JSONSchemaProps {
            max_length,
            ..item.clone()
        }))),
        ..Default::default()
    };
    let cost = |schema: JSONSchemaProps| {
        estimate(&Rule {
            path: "networks".into(),
            text: "self.all(n, isCIDR(n))".into(),
            schema,
            cardinality: 1.0,
        })
        .unwrap()
        .cost
    };
    // What a v1.36 API server answered: over 100x unbounded, about 2x with only maxItems 64,
    // about 3x with only maxLength, within budget with both.
    assert!(cost(list(None, None)) > 100.0 * RULE_LIMIT);
    assert!(cost(list(Some(64), None)) > RULE_LIMIT);
    assert!(cost(list(None, Some(253))) > RULE_LIMIT);
    assert!(cost(list(Some(64), Some(64))) < RULE_LIMIT / 1000.0);
}

#[test]
fn formats_are_ones_kubernetes_knows() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        walk(&root(&crd), "", 1.0, &mut |path, schema, _| {
            if let Some(format) = &schema.format {
                assert!(
                    KUBERNETES_FORMATS.contains(&format.as_str()),
                    "{name}: {path} has format {format:?}, which the API server does not know"
                );
            }
        });
    }
}

struct Rule {
    path: String,
    text: String,
    schema: JSONSchemaProps,
    /// How many times the rule can run for one object.
    cardinality: f64,
}

fn root(crd: &CustomResourceDefinition) -> JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.clone())
        .expect("schema")
}

fn rules(crd: &CustomResourceDefinition) -> Vec<Rule> {
    let mut rules = Vec::new();
    walk(&root(crd), "", 1.0, &mut |path, schema, cardinality| {
        for rule in schema.x_kubernetes_validations.iter().flatten() {
            rules.push(Rule {
                path: path.to_string(),
                text: rule.rule.clone(),
                schema: schema.clone(),
                cardinality,
            });
        }
    });
    rules
}

/// Calls `visit` for every schema node with its path and how often it can occur in one object.
fn walk(
    schema: &JSONSchemaProps,
    path: &str,
    cardinality: f64,
    visit: &mut dyn FnMut(&str, &JSONSchemaProps, f64),
) {
    visit(path, schema, cardinality);
    for (name, child) in schema.properties.iter().flatten() {
        walk(child, &format!("{path}.{name}"), cardinality, visit);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        walk(
            items,
            &format!("{path}[]"),
            cardinality * max_items(schema),
            visit,
        );
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        let count = schema
            .max_properties
            .map(|n| n as f64)
            .unwrap_or(REQUEST / 4.0);
        walk(values, &format!("{path}{{}}"), cardinality * count, visit);
    }
}

/// Smallest JSON a value of this schema takes, as the API server estimates it.
fn min_size(schema: &JSONSchemaProps) -> f64 {
    match schema.type_.as_deref() {
        Some("string") => 2.0 + schema.min_length.unwrap_or(0) as f64,
        Some("boolean") => 4.0,
        Some("integer" | "number") => 1.0,
        _ => 2.0,
    }
}

fn max_items(list: &JSONSchemaProps) -> f64 {
    if let Some(max) = list.max_items {
        return max as f64;
    }
    let item = match &list.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => min_size(item),
        _ => 2.0,
    };
    (REQUEST / (item + 1.0)).floor()
}

fn max_length(string: &JSONSchemaProps) -> f64 {
    string.max_length.map(|n| n as f64).unwrap_or(REQUEST)
}

/// A rule's estimated worst-case cost, and the fields it reads that have no bound.
struct Estimate {
    cost: f64,
    unbounded: Vec<String>,
}

fn estimate(rule: &Rule) -> Result<Estimate, String> {
    let tokens = tokenize(&rule.text)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        scope: vec![
            (
                "self".into(),
                Value::Schema(Box::new(rule.schema.clone()), "self".into()),
            ),
            (
                "oldSelf".into(),
                Value::Schema(Box::new(rule.schema.clone()), "oldSelf".into()),
            ),
        ],
        unbounded: Vec::new(),
    };
    let (cost, _) = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!("cannot read past {:?}", parser.tokens[parser.at]));
    }
    Ok(Estimate {
        cost,
        unbounded: parser.unbounded,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Literal,
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    const SYMBOLS: &[&str] = &[
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "(", ")", ",", ".",
    ];
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(symbol) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            tokens.push(Token::Symbol(symbol));
            rest = &rest[symbol.len()..];
        } else if let Some(quoted) = rest.strip_prefix('\'') {
            let end = quoted.find('\'').ok_or("unterminated string")?;
            tokens.push(Token::Literal);
            rest = &quoted[end + 1..];
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("unexpected {rest:?}"));
            }
            let word = &rest[..end];
            tokens.push(if word.chars().all(|c| c.is_ascii_digit()) {
                Token::Literal
            } else {
                Token::Ident(word.into())
            });
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(tokens)
}

/// What an expression evaluates to, as far as cost goes.
#[derive(Clone)]
enum Value {
    /// A value described by a schema node, with the path the rule reached it by.
    Schema(Box<JSONSchemaProps>, String),
    /// A literal, a boolean or a number: constant size.
    Scalar,
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    scope: Vec<(String, Value)>,
    unbounded: Vec<String>,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, symbol: &str) -> Result<(), String> {
        if self.eat(symbol) {
            Ok(())
        } else {
            Err(format!("expected {symbol:?} at {:?}", self.peek()))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.tokens.get(self.at).cloned() {
            Some(Token::Ident(name)) => {
                self.at += 1;
                Ok(name)
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<(f64, Value), String> {
        let (mut cost, mut value) = self.and()?;
        while self.eat("||") {
            cost += self.and()?.0;
            value = Value::Scalar;
        }
        Ok((cost, value))
    }

    fn and(&mut self) -> Result<(f64, Value), String> {
        let (mut cost, mut value) = self.unary()?;
        while self.eat("&&") {
            cost += self.unary()?.0;
            value = Value::Scalar;
        }
        Ok((cost, value))
    }

    fn unary(&mut self) -> Result<(f64, Value), String> {
        if self.eat("!") {
            let (cost, _) = self.unary()?;
            return Ok((cost, Value::Scalar));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<(f64, Value), String> {
        let (left_cost, left) = self.postfix()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat(op) {
                let (right_cost, right) = self.postfix()?;
                let compare = 1.0 + self.traversal(&left).min(self.traversal(&right));
                return Ok((left_cost + right_cost + compare, Value::Scalar));
            }
        }
        Ok((left_cost, left))
    }

    /// Cost of reading a string value byte by byte (0 for values of constant size).
    fn traversal(&mut self, value: &Value) -> f64 {
        match value {
            Value::Schema(schema, path) if schema.type_.as_deref() == Some("string") => {
                if schema.max_length.is_none() {
                    self.unbounded.push(path.clone());
                }
                (max_length(schema) * STRING_TRAVERSAL).ceil()
            }
            Value::Schema(schema, path)
                if matches!(schema.type_.as_deref(), Some("array" | "object")) =>
            {
                self.unbounded.push(format!("{path} (compared as a whole)"));
                REQUEST * STRING_TRAVERSAL
            }
            _ => 0.0,
        }
    }

    fn postfix(&mut self) -> Result<(f64, Value), String> {
        let (mut cost, mut value) = self.primary()?;
        while self.eat(".") {
            let name = self.ident()?;
            if self.eat("(") {
                let (call, result) = self.method(&name, value)?;
                cost += call;
                value = result;
            } else {
                cost += 1.0;
                value = field(&value, &name);
            }
        }
        Ok((cost, value))
    }

    fn primary(&mut self) -> Result<(f64, Value), String> {
        if self.eat("(") {
            let inner = self.or()?;
            self.expect(")")?;
            return Ok(inner);
        }
        if self.peek() == Some(&Token::Literal) {
            self.at += 1;
            return Ok((0.0, Value::Scalar));
        }
        let name = self.ident()?;
        if self.eat("(") {
            return self.function(&name);
        }
        let value = self
            .scope
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("unknown name {name}"))?;
        Ok((1.0, value))
    }

    fn function(&mut self, name: &str) -> Result<(f64, Value), String> {
        let (arg_cost, arg) = self.or()?;
        self.expect(")")?;
        let call = match name {
            "has" | "size" => 1.0,
            "isCIDR" | "isIP" | "cidr" | "ip" => 1.0 + self.traversal(&arg),
            other => return Err(format!("no cost model for {other}()")),
        };
        Ok((arg_cost + call, Value::Scalar))
    }

    fn method(&mut self, name: &str, target: Value) -> Result<(f64, Value), String> {
        match name {
            "all" | "exists" | "exists_one" => {
                let variable = self.ident()?;
                self.expect(",")?;
                let (items, element) = match &target {
                    Value::Schema(list, path) if list.type_.as_deref() == Some("array") => {
                        if list.max_items.is_none() {
                            self.unbounded.push(path.clone());
                        }
                        let element = match &list.items {
                            Some(JSONSchemaPropsOrArray::Schema(item)) => {
                                Value::Schema(item.clone(), format!("{path}[]"))
                            }
                            _ => Value::Scalar,
                        };
                        (max_items(list), element)
                    }
                    _ => return Err(format!("{name}() over something that is not a list")),
                };
                self.scope.push((variable, element));
                let (body, _) = self.or()?;
                self.scope.pop();
                self.expect(")")?;
                // The loop condition and the accumulator step around the body, per element.
                Ok((2.0 + items * (body + 3.0), Value::Scalar))
            }
            other => Err(format!("no cost model for .{other}()")),
        }
    }
}

fn field(value: &Value, name: &str) -> Value {
    match value {
        Value::Schema(schema, path) => match schema.properties.as_ref().and_then(|p| p.get(name)) {
            Some(child) => Value::Schema(Box::new(child.clone()), format!("{path}.{name}")),
            // metadata and fields the schema leaves open: the API server bounds them itself.
            None => Value::Scalar,
        },
        Value::Scalar => Value::Scalar,
    }
}
