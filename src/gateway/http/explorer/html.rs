//! The HTML side of the explorer: relative links, the page layout, escaping and formatting.

use super::*;
// ---------------------------------------------------------------------------------------------
// HTML.

/// Relative links from the page being rendered, so a path prefix added by a reverse proxy is
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Nav {
    /// The explorer's start page, relative to this page.
    root: String,
    /// The status page, relative to this page.
    status: String,
}

impl Nav {
    pub(super) fn for_path(path: &str) -> Nav {
        let depth = path.matches('/').count().saturating_sub(1);
        let up = "../".repeat(depth);
        Nav {
            root: format!("{up}explorer"),
            status: if depth == 0 { "./".into() } else { up },
        }
    }

    pub(super) fn block(&self, at: &str) -> String {
        format!("{}/block/{at}", self.root)
    }

    pub(super) fn tx(&self, txid: &str) -> String {
        format!("{}/tx/{txid}", self.root)
    }

    pub(super) fn address(&self, address: &str) -> String {
        format!("{}/address/{}", self.root, percent_encode(address))
    }
}

pub(super) fn layout(ctx: &Core, nav: &Nav, title: &str, q: &str, body: &str) -> String {
    let (tip, target) = ctx.pool.tracker().progress();
    let syncing = if target > tip {
        format!("<span class=\"badge warn\">syncing headers: {tip} of {target}</span>")
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title} · electrum-gateway explorer</title>\n<style>\n{STYLE}</style>\n</head>\n\
         <body>\n<header>\n<h1><a href=\"{status}\">electrum-gateway</a> \
         <a class=\"sub\" href=\"{root}\">explorer</a></h1>\n\
         <span>network <strong id=\"network\">{network}</strong></span>\n\
         <span>verified tip <a id=\"tip\" href=\"{tip_href}\">{tip}</a></span>{syncing}\n\
         <form class=\"search\" method=\"get\" action=\"{root}\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{q}\" maxlength=\"{MAX_QUERY}\" \
         placeholder=\"block height or hash, transaction id, or address\" \
         aria-label=\"block height or hash, transaction id, or address\">\
         <button type=\"submit\">Search</button></form>\n</header>\n<main>\n{body}\n</main>\n\
         </body>\n</html>\n",
        title = esc(title),
        status = esc(&nav.status),
        root = esc(&nav.root),
        network = esc(crate::address::network_name(ctx.network)),
        tip_href = esc(&nav.block(&tip.to_string())),
        q = esc(q),
    )
}

pub(super) fn failure_html(f: &Failure, q: &str) -> String {
    let searched = if q.is_empty() {
        String::new()
    } else {
        format!(
            "<p>You searched for <code id=\"searched\">{}</code>.</p>",
            esc(q)
        )
    };
    let detail = f
        .detail
        .as_deref()
        .map(|d| {
            format!(
                "<p class=\"muted\">Upstream answer: <code id=\"detail\">{}</code></p>",
                esc(&shorten(d, 500))
            )
        })
        .unwrap_or_default();
    let hint = if matches!(f.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND) {
        "<p class=\"muted\">Search for a block height, a block hash, a transaction id \
         (64 hex digits) or an address of this network.</p>"
    } else {
        ""
    };
    format!(
        "<section class=\"error\"><h2 id=\"error-title\">{}</h2>\
         <p id=\"error\">{}</p>{searched}{detail}{hint}</section>",
        esc(f.title),
        esc(&f.message)
    )
}

pub(super) fn kv_table(rows: &[(&str, &str, String)]) -> String {
    let mut out = String::from("<table class=\"kv\"><tbody>");
    for (label, id, html) in rows {
        let _ = write!(
            out,
            "<tr><th>{}</th><td id=\"{}\">{html}</td></tr>",
            esc(label),
            esc(id)
        );
    }
    out.push_str("</tbody></table>");
    out
}

pub(super) fn mono(s: &str) -> String {
    format!("<span class=\"mono\">{}</span>", esc(s))
}

/// A link to a transaction whose id came from an upstream: linked only if it is a txid.
pub(super) fn tx_link(nav: &Nav, txid: &str) -> String {
    match Txid::from_str(txid) {
        Ok(t) => format!(
            "<a href=\"{}\">{}</a>",
            esc(&nav.tx(&t.to_string())),
            esc(&t.to_string())
        ),
        Err(_) => esc(txid),
    }
}

pub(super) fn amount_html(sats: i64) -> String {
    format!(
        "<span class=\"amount\" data-sats=\"{sats}\">{}</span>",
        esc(&btc(sats))
    )
}

/// HTML-escapes text for element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters, with an ellipsis when cut.
pub(super) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Satoshis as bitcoins with all eight decimals: `-0.00012345 BTC`.
pub(super) fn btc(sats: i64) -> String {
    let sign = if sats < 0 { "-" } else { "" };
    let abs = sats.unsigned_abs();
    format!("{sign}{}.{:08} BTC", abs / 100_000_000, abs % 100_000_000)
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub(super) fn utc(ts: u32) -> String {
    let days = i64::from(ts / 86_400);
    let secs = ts % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The value of `name` in an `application/x-www-form-urlencoded` query string.
pub(super) fn form_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k, true) == name).then(|| percent_decode(v, true))
    })
}

/// Decodes `%XX` escapes (and `+` as a space in form values); malformed escapes stay as they
/// are, and bytes that are not UTF-8 become U+FFFD.
pub(super) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            // Two hex digits exactly: `u8::from_str_radix` alone would also take a sign.
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters, for a path segment.
pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn dates_are_utc() {
        // The mainnet genesis block's time, and the regtest genesis block's.
        assert_eq!(utc(1_231_006_505), "2009-01-03 18:15:05 UTC");
        assert_eq!(utc(1_296_688_602), "2011-02-02 23:16:42 UTC");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // A leap day, and the last second a u32 holds.
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(u32::MAX), "2106-02-07 06:28:15 UTC");
    }

    #[test]
    fn amounts_keep_eight_decimals() {
        assert_eq!(btc(0), "0.00000000 BTC");
        assert_eq!(btc(1), "0.00000001 BTC");
        assert_eq!(btc(5_000_000_000), "50.00000000 BTC");
        assert_eq!(btc(-12_345), "-0.00012345 BTC");
        assert_eq!(btc(i64::MIN), "-92233720368.54775808 BTC");
    }

    #[test]
    fn query_strings_decode_like_forms() {
        assert_eq!(form_param("q=abc", "q").as_deref(), Some("abc"));
        assert_eq!(
            form_param("x=1&q=%3Cscript%3E+1", "q").as_deref(),
            Some("<script> 1")
        );
        assert_eq!(form_param("q", "q").as_deref(), Some(""));
        assert_eq!(form_param("qq=1", "q"), None);
        assert_eq!(form_param("q=%zz%4", "q").as_deref(), Some("%zz%4"));
        assert_eq!(form_param("q=%FF", "q").as_deref(), Some("\u{fffd}"));
        assert_eq!(percent_decode("a+b%20c", false), "a+b c");
    }

    /// Found by fuzzing (explorer_query): `%+0` decoded as the byte 0, because
    /// `u8::from_str_radix` takes a leading `+`. Only `%` and two hex digits is an escape.
    #[test]
    fn a_sign_is_not_a_hex_digit() {
        assert_eq!(percent_decode("r%+0f10+ro", true), "r% 0f10 ro");
        assert_eq!(percent_decode("%+f%-1%+", false), "%+f%-1%+");
        assert_eq!(form_param("q=%+41", "q").as_deref(), Some("% 41"));
        assert_eq!(percent_decode("%4a%4A", false), "JJ");
    }

    #[test]
    fn links_are_relative_to_the_page() {
        let top = Nav::for_path("/explorer");
        assert_eq!(top.tx("ab"), "explorer/tx/ab");
        assert_eq!(top.status, "./");
        let slash = Nav::for_path("/explorer/");
        assert_eq!(slash.block("7"), "../explorer/block/7");
        let deep = Nav::for_path("/explorer/block/7");
        assert_eq!(
            deep.address("bcrt1q x"),
            "../../explorer/address/bcrt1q%20x"
        );
        assert_eq!(deep.status, "../../");
    }
}
