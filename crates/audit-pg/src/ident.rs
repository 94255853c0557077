//! Quoting for SQL text that cannot take parameters (DDL names, `SET` values).

/// Quotes an identifier (`"a""b"`): our names are generated, but quoting keeps DDL safe by construction.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`), for statements such as `SET x = '…'` and DDL that take no parameters.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
