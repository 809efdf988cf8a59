//! `electrum-gateway call`: one request, its answer as pretty JSON.
//!
//! Arguments arrive as shell words, but Electrum methods want typed JSON parameters
//! (`blockchain.block.header 5` needs the number 5, `blockchain.transaction.get TXID true` a
//! boolean), so words that look like JSON scalars or containers are sent as such; see
//! [`parse_param`] for the exact rule and `--raw` for sending every word as a string.

use bitcoin::Network;
use clap::Args;
use serde_json::Value;

use super::{report_error, server_network, ConnectArgs, ToolError, EXIT_OK};
use crate::address::script_hash;
use crate::client::{Client, ClientConfig};
use crate::protocol::methods::scripthash_twin;

/// Arguments of `electrum-gateway call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Send every argument as a JSON string, exactly as given.
    #[arg(long)]
    pub raw: bool,
    /// The method, e.g. blockchain.headers.subscribe.
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// Its parameters. Integers, decimals, true, false, null, and JSON arrays, objects or
    /// "quoted strings" are sent as JSON; anything else as a string.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// Turns one command-line word into a JSON parameter.
///
/// Without `raw`:
/// - a decimal integer without leading zeros that fits 64 bits (`5`, `-1`) is a number;
/// - a decimal fraction (`0.5`, `-2.25`) is a number; exponents (`1e5`) are not recognized,
///   so hex strings such as `1e10` stay strings;
/// - `true`, `false` and `null` are themselves;
/// - a word starting with `[`, `{` or `"` that parses as JSON is that JSON value (so
///   `'"123"'` sends the string `123`);
/// - anything else is a string.
///
/// With `raw` every word is a string.
pub fn parse_param(word: &str, raw: bool) -> Value {
    if raw {
        return Value::String(word.to_string());
    }
    match word {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" => return Value::Null,
        _ => {}
    }
    if is_decimal(word) {
        if let Ok(n) = word.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = word.parse::<u64>() {
            return Value::from(n);
        }
        if word.contains('.') {
            if let Some(n) = word
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                return Value::Number(n);
            }
        }
    }
    if word.starts_with(['[', '{', '"']) {
        if let Ok(v) = serde_json::from_str::<Value>(word) {
            return v;
        }
    }
    Value::String(word.to_string())
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`
fn is_decimal(word: &str) -> bool {
    let digits = word.strip_prefix('-').unwrap_or(word);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let int_ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'));
    let frac_ok = frac.map_or(true, |f| {
        !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())
    });
    int_ok && frac_ok
}

/// Makes one call on a connected client and returns the result.
///
/// `blockchain.address.*` methods are sent as their `blockchain.scripthash.*` twins with the
/// address converted on `network`; without a network, the server's (from the genesis hash
/// in `server.features`) is used, and with one, a server on another network is refused.
pub async fn call(
    client: &Client,
    network: Option<Network>,
    method: &str,
    mut params: Vec<Value>,
) -> Result<Value, ToolError> {
    let mut method = method.to_string();
    if let Some(twin) = scripthash_twin(&method) {
        let Some(Value::String(address)) = params.first() else {
            return Err(ToolError::Usage(format!(
                "{method} takes an address as its first parameter"
            )));
        };
        let address = address.clone();
        check_address_syntax(&address)?;
        let network = server_network(client, network).await?;
        let sh = script_hash(&address, network).map_err(|e| ToolError::Usage(e.to_string()))?;
        params[0] = Value::String(sh);
        method = twin.to_string();
    }
    let raw = client.request(&method, params).await?;
    serde_json::from_str(raw.get())
        .map_err(|e| ToolError::Connection(format!("server sent an unreadable result: {e}")))
}

/// Refuses strings that are not addresses of any network, before anything is asked of the
/// server.
pub(crate) fn check_address_syntax(address: &str) -> Result<(), ToolError> {
    address
        .trim()
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
        .map(|_| ())
        .map_err(|e| ToolError::Usage(format!("invalid address {address:?}: {e}")))
}

/// Connects with `config` and makes one call (see [`call`]).
pub async fn call_once(
    config: ClientConfig,
    network: Option<Network>,
    method: &str,
    params: Vec<Value>,
) -> Result<Value, ToolError> {
    let client = Client::connect(config).await?;
    let result = call(&client, network, method, params).await;
    client.close().await;
    result
}

/// Runs `electrum-gateway call`: prints the result as pretty JSON on stdout and returns 0,
/// or prints the error on stderr and returns its exit code (1: the server answered with an
/// error, 2: bad usage, address or network, 3: connection problem).
pub async fn run(args: CallArgs) -> anyhow::Result<i32> {
    match run_inner(args).await {
        Ok(result) => {
            let text = serde_json::to_string_pretty(&result)?;
            println!("{text}");
            Ok(EXIT_OK)
        }
        Err(e) => Ok(report_error(&e)),
    }
}

async fn run_inner(args: CallArgs) -> Result<Value, ToolError> {
    let config = args.connect.client_config(false)?;
    let network = args.connect.network()?;
    let params: Vec<Value> = args.args.iter().map(|a| parse_param(a, args.raw)).collect();
    // A mistyped address is reported without connecting first.
    if let (Some(_), Some(Value::String(address))) = (scripthash_twin(&args.method), params.first())
    {
        check_address_syntax(address)?;
    }
    call_once(config, network, &args.method, params).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_become_typed_params() {
        let cases = [
            ("5", json!(5)),
            ("-1", json!(-1)),
            ("0", json!(0)),
            ("18446744073709551615", json!(u64::MAX)),
            ("0.5", json!(0.5)),
            ("-2.25", json!(-2.25)),
            ("true", json!(true)),
            ("false", json!(false)),
            ("null", Value::Null),
            ("[\"1.4\",\"1.6\"]", json!(["1.4", "1.6"])),
            ("{\"a\":1}", json!({"a": 1})),
            ("\"123\"", json!("123")),
            // Strings that merely resemble numbers or JSON.
            ("0123", json!("0123")),
            ("1e10", json!("1e10")),
            ("1.", json!("1.")),
            (".5", json!(".5")),
            ("-", json!("-")),
            ("99999999999999999999999", json!("99999999999999999999999")),
            ("[not json", json!("[not json")),
            ("True", json!("True")),
            ("", json!("")),
            (
                "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161",
                json!("8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"),
            ),
        ];
        for (word, want) in cases {
            assert_eq!(parse_param(word, false), want, "{word:?}");
        }
        for word in ["5", "true", "[1]", "null"] {
            assert_eq!(parse_param(word, true), json!(word));
        }
    }

    #[test]
    fn address_syntax_is_checked_without_a_network() {
        assert!(check_address_syntax("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080").is_ok());
        assert!(check_address_syntax("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa").is_ok());
        for bad in ["", "hello", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"] {
            assert!(matches!(
                check_address_syntax(bad),
                Err(ToolError::Usage(_))
            ));
        }
    }
}
