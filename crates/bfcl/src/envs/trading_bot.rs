//! `TradingBot`: a stock trading account with orders, funds, a watch list and a
//! transaction history, as BFCL's reference class behaves.
//!
//! Scenario values are kept as Python values (`Value`) wherever the class does arithmetic
//! or comparisons on them, so that `int` stays `int`, balances follow Python's float
//! arithmetic, and mixed comparisons behave as Python's.

mod clock;

use std::cmp::Ordering;
use std::sync::Arc;

use clock::{DateTime, strptime};

use crate::call::Call;
use crate::env::{Default as D, Environment, LongContext, Param, bind, opt, req};
use crate::pyrandom::PyRandom;
use crate::value::{Dict, Key, Value};
use crate::{dict, vdict};

const CLASS: &str = "TradingBot";

/// The fixed "now" of the class (`datetime(2024, 9, 1, 10, 30)`).
const CURRENT_TIME: DateTime = DateTime::new(2024, 9, 1, 10, 30);

const DEFAULT_SEED: i64 = 1_053_520;

const FUNCTIONS: &[&str] = &[
    "get_current_time",
    "get_symbol_by_name",
    "get_stock_info",
    "get_order_details",
    "cancel_order",
    "place_order",
    "withdraw_funds",
    "get_account_info",
    "trading_login",
    "trading_get_login_status",
    "trading_logout",
    "fund_account",
    "remove_stock_from_watchlist",
    "get_watchlist",
    "get_order_history",
    "get_transaction_history",
    "get_available_stocks",
    "filter_stocks_by_price",
    "add_to_watchlist",
    "notify_price_change",
];

/// A fresh `TradingBot` in its built-in default state.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(TradingBot::default()))
}

/// The long-context filler this class appends to some of its answers.
#[derive(Debug)]
struct Filler {
    watch_list: Vec<Value>,
    transactions: Vec<Value>,
    ma_5: Value,
    ma_20: Value,
    technology: Vec<Value>,
    automobile: Vec<Value>,
    order_detail: Dict,
}

impl Filler {
    fn from(lc: &LongContext) -> Result<Filler, String> {
        let list = |name: &str| -> Result<Vec<Value>, String> {
            lc.get(name)?.as_list().map(<[Value]>::to_vec).ok_or_else(|| format!("`{name}` must be a list"))
        };
        Ok(Filler {
            watch_list: list("WATCH_LIST_EXTENSION")?,
            transactions: list("TRANSACTION_HISTORY_EXTENSION")?,
            ma_5: lc.get("MA_5_EXTENSION")?.clone(),
            ma_20: lc.get("MA_20_EXTENSION")?.clone(),
            technology: list("TECHNOLOGY_EXTENSION")?,
            automobile: list("AUTOMOBILE_EXTENSION")?,
            order_detail: lc
                .get("ORDER_DETAIL_EXTENSION")?
                .as_dict()
                .cloned()
                .ok_or("`ORDER_DETAIL_EXTENSION` must be a dict")?,
        })
    }
}

/// The trading bot. Public attributes are the fields before `filler`.
#[derive(Debug, Clone)]
pub struct TradingBot {
    orders: Dict,
    account_info: Dict,
    authenticated: Value,
    market_status: Value,
    order_counter: Value,
    stocks: Dict,
    watch_list: Vec<Value>,
    transaction_history: Vec<Value>,
    long_context: bool,
    /// The filler, present when `long_context` is on.
    filler: Option<Arc<Filler>>,
    random: PyRandom,
}

impl Default for TradingBot {
    fn default() -> Self {
        let mut bot = TradingBot {
            orders: Dict::new(),
            account_info: Dict::new(),
            authenticated: Value::Bool(false),
            market_status: Value::None,
            order_counter: Value::None,
            stocks: Dict::new(),
            watch_list: Vec::new(),
            transaction_history: Vec::new(),
            long_context: false,
            filler: None,
            random: PyRandom::new(DEFAULT_SEED),
        };
        bot.load_scenario(&Dict::new(), None).expect("the default state loads");
        bot
    }
}

fn default_orders() -> Dict {
    dict! {
        12345 => vdict! {
            "id" => 12345, "order_type" => "Buy", "symbol" => "AAPL", "price" => 210.65, "amount" => 10,
            "status" => "Completed",
        },
        12446 => vdict! {
            "id" => 12446, "order_type" => "Sell", "symbol" => "GOOG", "price" => 2840.56, "amount" => 5,
            "status" => "Pending",
        },
    }
}

fn default_stocks() -> Dict {
    const STOCKS: &[(&str, [f64; 5])] = &[
        ("AAPL", [227.16, 0.17, 2.552, 227.11, 227.09]),
        ("GOOG", [2840.34, 0.24, 1.123, 2835.67, 2842.15]),
        ("TSLA", [667.92, -0.12, 1.654, 671.15, 668.20]),
        ("MSFT", [310.23, 0.09, 3.234, 309.88, 310.11]),
        ("NVDA", [220.34, 0.34, 1.234, 220.45, 220.67]),
        ("ALPH", [1320.45, -0.08, 1.567, 1321.12, 1325.78]),
        ("OMEG", [457.23, 0.12, 2.345, 456.78, 458.12]),
        ("QUAS", [725.89, -0.03, 1.789, 726.45, 728.00]),
        ("NEPT", [88.34, 0.19, 0.654, 88.21, 88.67]),
        ("SYNX", [345.67, 0.11, 2.112, 345.34, 346.12]),
        ("ZETA", [22.09, -0.05, 0.789, 22.12, 22.34]),
    ];
    STOCKS
        .iter()
        .map(|(sym, [price, change, volume, ma5, ma20])| {
            let info = vdict! {
                "price" => *price, "percent_change" => *change, "volume" => *volume, "MA(5)" => *ma5,
                "MA(20)" => *ma20,
            };
            (Key::from(*sym), info)
        })
        .collect()
}

/// A value as a dict key, as Python hashes it: `True` and `1.0` find the key `1`. `None`
/// means a hashable value that no key here can equal; unhashable values raise.
fn key_of(v: &Value) -> Result<Option<Key>, String> {
    Ok(match v {
        Value::Str(s) => Some(Key::Str(s.clone())),
        Value::Int(i) => Some(Key::Int(*i)),
        Value::Bool(b) => Some(Key::Int(i64::from(*b))),
        Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => Some(Key::Int(*x as i64)),
        Value::List(_) | Value::Dict(_) | Value::Set(_) => {
            return Err(format!("unhashable type: '{}'", v.type_name()));
        }
        _ => None,
    })
}

fn lookup<'a>(d: &'a Dict, k: &Value) -> Result<Option<&'a Value>, String> {
    Ok(key_of(k)?.and_then(|k| d.get(&k)))
}

/// Python's ordering of two numbers (exact between `int` and `float`); `None` when
/// unordered (a NaN). A non-number raises Python's `TypeError` for `op`.
fn py_cmp(a: &Value, b: &Value, op: &str) -> Result<Option<Ordering>, String> {
    use crate::value::Number::{Float, Int};
    let (Some(x), Some(y)) = (a.as_number(), b.as_number()) else {
        return Err(format!("'{op}' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name()));
    };
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let int_vs_float = |i: i64, f: f64| -> Option<Ordering> {
        if f.is_nan() {
            None
        } else if f >= TWO_63 {
            Some(Ordering::Less)
        } else if f < -TWO_63 {
            Some(Ordering::Greater)
        } else {
            let t = f.trunc();
            Some((i as i128).cmp(&(t as i128)).then_with(|| 0.0f64.partial_cmp(&(f - t)).expect("finite")))
        }
    };
    Ok(match (x, y) {
        (Int(i), Int(j)) => Some(i.cmp(&j)),
        (Float(f), Float(g)) => f.partial_cmp(&g),
        (Int(i), Float(f)) => int_vs_float(i, f),
        (Float(f), Int(i)) => int_vs_float(i, f).map(Ordering::reverse),
    })
}

fn le(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(matches!(py_cmp(a, b, "<=")?, Some(Ordering::Less | Ordering::Equal)))
}
fn ge(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(matches!(py_cmp(a, b, ">=")?, Some(Ordering::Greater | Ordering::Equal)))
}
fn gt(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(matches!(py_cmp(a, b, ">")?, Some(Ordering::Greater)))
}

/// Python's `a + b` (`sign` 1) or `a - b` (`sign` -1) on numbers.
fn py_arith(a: &Value, b: &Value, sign: i64) -> Result<Value, String> {
    use crate::value::Number::Int;
    let op = if sign > 0 { "+" } else { "-" };
    let (Some(x), Some(y)) = (a.as_number(), b.as_number()) else {
        return Err(format!("unsupported operand type(s) for {op}=: '{}' and '{}'", a.type_name(), b.type_name()));
    };
    Ok(match (x, y) {
        (Int(i), Int(j)) => {
            let r = if sign > 0 { i.checked_add(j) } else { i.checked_sub(j) };
            Value::Int(r.ok_or("integer overflow")?)
        }
        _ if sign > 0 => Value::Float(x.to_f64() + y.to_f64()),
        _ => Value::Float(x.to_f64() - y.to_f64()),
    })
}

/// `float(v)` for a number.
fn to_float(v: &Value) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("float() argument must be a string or a real number, not '{}'", v.type_name()))
}

/// `int(v)` for a number (truncating a float).
fn to_int(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(x) if x.is_nan() => Err("cannot convert float NaN to integer".into()),
        Value::Float(x) if x.is_infinite() => Err("cannot convert float infinity to integer".into()),
        Value::Float(x) => Ok(x.trunc()),
        _ => v
            .as_f64()
            .ok_or_else(|| format!("int() argument must be a string or a real number, not '{}'", v.type_name())),
    }
}

/// `f"{x:.2f}"` for a number.
fn fixed2(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.is_nan() => "nan".into(),
        Some(x) if x.is_infinite() => if x > 0.0 { "inf" } else { "-inf" }.into(),
        Some(x) => format!("{x:.2}"),
        None => v.py_str(),
    }
}

/// `str.format(symbol=...)` for the order-detail filler: `{symbol}` is replaced, `{{` and
/// `}}` are literal braces; another field name is the `KeyError` Python raises.
fn format_symbol(template: &str, symbol: &str) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(after) = tail.strip_prefix("{symbol}") {
            out.push_str(symbol);
            rest = after;
        } else if let Some(field) = tail.strip_prefix('{') {
            let name = field.split(['}', '!', ':']).next().unwrap_or_default();
            return Err(format!("'{name}'"));
        } else {
            return Err("Single '}' encountered in format string".into());
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `datetime.strptime(v, fmt)` where `v` should be a `str`.
fn parse_time(v: &Value, fmt: &str) -> Result<DateTime, String> {
    let s = v.as_str().ok_or_else(|| format!("strptime() argument 1 must be str, not {}", v.type_name()))?;
    strptime(s, fmt)
}

const SIG_NONE: &[Param] = &[];
const SIG_NAME: &[Param] = &[req("name")];
const SIG_SYMBOL: &[Param] = &[req("symbol")];
const SIG_ORDER_ID: &[Param] = &[req("order_id")];
const SIG_PLACE: &[Param] = &[req("order_type"), req("symbol"), req("price"), req("amount")];
const SIG_AMOUNT: &[Param] = &[req("amount")];
const SIG_LOGIN: &[Param] = &[req("username"), req("password")];
const SIG_HISTORY: &[Param] = &[opt("start_date", D::None), opt("end_date", D::None)];
const SIG_SECTOR: &[Param] = &[req("sector")];
const SIG_FILTER: &[Param] = &[req("stocks"), req("min_price"), req("max_price")];
const SIG_STOCK: &[Param] = &[req("stock")];
const SIG_NOTIFY: &[Param] = &[req("stocks"), req("threshold")];

fn error(msg: impl Into<String>) -> Value {
    vdict! { "error" => msg.into() }
}

impl TradingBot {
    /// A transaction time drawn uniformly from the day after `CURRENT_TIME`.
    fn transaction_timestamp(&mut self) -> String {
        let start = CURRENT_TIME.timestamp();
        let t = self.random.randint(start, start + 86_400);
        DateTime::from_timestamp(t).format_ymd_hms()
    }

    fn balance(&self) -> Result<&Value, String> {
        self.account_info.get(&Key::from("balance")).ok_or_else(|| "'balance'".to_owned())
    }

    fn get_symbol_by_name(name: &Value) -> Result<Value, String> {
        const SYMBOLS: &[(&str, &str)] = &[
            ("Apple", "AAPL"),
            ("Google", "GOOG"),
            ("Tesla", "TSLA"),
            ("Microsoft", "MSFT"),
            ("Nvidia", "NVDA"),
            ("Zeta Corp", "ZETA"),
            ("Alpha Tech", "ALPH"),
            ("Omega Industries", "OMEG"),
            ("Quasar Ltd.", "QUAS"),
            ("Neptune Systems", "NEPT"),
            ("Synex Solutions", "SYNX"),
            ("Amazon", "AMZN"),
            ("Gorilla", "GORI"),
        ];
        key_of(name)?;
        let symbol =
            name.as_str().and_then(|n| SYMBOLS.iter().find(|(k, _)| *k == n)).map_or("Stock not found", |p| p.1);
        Ok(vdict! { "symbol" => symbol })
    }

    fn get_stock_info(&self, symbol: &Value) -> Result<Value, String> {
        let Some(stock) = lookup(&self.stocks, symbol)? else {
            return Ok(error(format!("Stock with symbol '{}' not found.", symbol.py_str())));
        };
        if let Some(filler) = &self.filler {
            let Value::Dict(stock) = stock else {
                return Err(format!("'{}' object has no attribute 'copy'", stock.type_name()));
            };
            let mut stock = stock.clone();
            stock.insert(Key::from("MA(5)"), filler.ma_5.clone());
            stock.insert(Key::from("MA(20)"), filler.ma_20.clone());
            return Ok(Value::Dict(stock));
        }
        Ok(stock.clone())
    }

    fn get_order_details(&self, order_id: &Value) -> Result<Value, String> {
        let Some(order) = lookup(&self.orders, order_id)? else {
            let ids: Vec<Value> = self.orders.keys().map(Key::to_value).collect();
            return Ok(error(format!(
                "Order with ID {} not found.Here is the list of orders_id: {}",
                order_id.py_str(),
                Value::List(ids).repr()
            )));
        };
        let Some(filler) = &self.filler else { return Ok(order.clone()) };
        let Value::Dict(order) = order else {
            return Err(format!("'{}' object has no attribute 'copy'", order.type_name()));
        };
        let mut order = order.clone();
        let symbol = order.get(&Key::from("symbol")).ok_or("'symbol'")?.py_str();
        let mut metadata = Dict::new();
        for (k, template) in &filler.order_detail {
            let text = template.as_str().ok_or("`ORDER_DETAIL_EXTENSION` values must be strings")?;
            match format_symbol(text, &symbol) {
                Ok(s) => metadata.insert(k.clone(), Value::Str(s)),
                Err(e) => return Ok(error(format!("KeyError during formatting: {e}"))),
            };
        }
        order.insert(Key::from("metadata"), Value::Dict(metadata));
        Ok(Value::Dict(order))
    }

    fn cancel_order(&mut self, order_id: &Value) -> Result<Value, String> {
        let Some(key) = key_of(order_id)?.filter(|k| self.orders.contains_key(k)) else {
            return Ok(error(format!("Order with ID {} not found.", order_id.py_str())));
        };
        let order = self.orders.get_mut(&key).expect("checked above");
        let Value::Dict(order) = order else {
            return Err(match order {
                Value::Str(_) => "string indices must be integers, not 'str'".to_owned(),
                other => format!("'{}' object is not subscriptable", other.type_name()),
            });
        };
        let status = order.get(&Key::from("status")).ok_or("'status'")?;
        if *status == Value::from("Completed") {
            return Ok(error(format!("Can't cancel order {}. Order is already completed.", order_id.py_str())));
        }
        order.insert(Key::from("status"), Value::from("Cancelled"));
        Ok(vdict! { "order_id" => order_id.clone(), "status" => "Cancelled" })
    }

    fn place_order(
        &mut self,
        order_type: &Value,
        symbol: &Value,
        price: &Value,
        amount: &Value,
    ) -> Result<Value, String> {
        if !self.authenticated.truthy() {
            return Ok(error("User not authenticated. Please log in to place an order."));
        }
        if lookup(&self.stocks, symbol)?.is_none() {
            return Ok(error(format!("Invalid stock symbol: {}", symbol.py_str())));
        }
        let zero = Value::Int(0);
        if le(price, &zero)? || le(amount, &zero)? {
            return Ok(error("Price and amount must be positive values."));
        }
        let kind = order_type
            .as_str()
            .ok_or_else(|| format!("'{}' object has no attribute 'lower'", order_type.type_name()))?;
        if kind.to_lowercase() == "buy" {
            let total_cost = to_float(price)? * to_int(amount)?;
            let balance = self.account_info.get(&Key::from("balance")).cloned().unwrap_or(Value::Int(0));
            if gt(&Value::Float(total_cost), &balance)? {
                return Ok(error(format!(
                    "Insufficient funds: required ${total_cost:.2} but only ${} available.",
                    fixed2(&balance)
                )));
            }
        }
        let price = Value::Float(to_float(price)?);
        let id = self.order_counter.clone();
        let key = key_of(&id)?.ok_or_else(|| format!("orders cannot be keyed by {}", id.repr()))?;
        let order = vdict! {
            "id" => id.clone(), "order_type" => order_type.clone(), "symbol" => symbol.clone(), "price" => price.clone(),
            "amount" => amount.clone(), "status" => "Open",
        };
        self.orders.insert(key, order);
        self.order_counter = match &self.order_counter {
            Value::Str(_) => return Err("can only concatenate str (not \"int\") to str".into()),
            other => py_arith(other, &Value::Int(1), 1)?,
        };
        Ok(vdict! {
            "order_id" => id, "order_type" => order_type.clone(), "status" => "Pending", "price" => price,
            "amount" => amount.clone(),
        })
    }

    fn withdraw_funds(&mut self, amount: &Value) -> Result<Value, String> {
        if !self.authenticated.truthy() {
            return Ok(error("User not authenticated. Please log in to make a transaction."));
        }
        if self.market_status != Value::from("Open") {
            return Ok(error("Market is closed. Transactions are not allowed."));
        }
        if le(amount, &Value::Int(0))? {
            return Ok(error("Transaction amount must be positive."));
        }
        if gt(amount, self.balance()?)? {
            return Ok(error("Insufficient funds for withdrawal."));
        }
        let balance = py_arith(self.balance()?, amount, -1)?;
        self.account_info.insert(Key::from("balance"), balance.clone());
        let timestamp = self.transaction_timestamp();
        self.transaction_history.push(vdict! {
            "type" => "withdrawal", "amount" => amount.clone(), "timestamp" => timestamp,
        });
        Ok(vdict! { "status" => "Withdrawal successful", "new_balance" => balance })
    }

    fn fund_account(&mut self, amount: &Value) -> Result<Value, String> {
        if !self.authenticated.truthy() {
            return Ok(error("User not authenticated. Please log in to fund the account."));
        }
        if le(amount, &Value::Int(0))? {
            return Ok(error("Funding amount must be positive."));
        }
        let balance = py_arith(self.balance()?, amount, 1)?;
        self.account_info.insert(Key::from("balance"), balance.clone());
        let timestamp = self.transaction_timestamp();
        self.transaction_history.push(vdict! {
            "type" => "deposit", "amount" => amount.clone(), "timestamp" => timestamp,
        });
        Ok(vdict! { "status" => "Account funded successfully", "new_balance" => balance })
    }

    fn remove_stock_from_watchlist(&mut self, symbol: &Value) -> Value {
        if !self.authenticated.truthy() {
            return error("User not authenticated. Please log in to modify the watchlist.");
        }
        let Some(i) = self.watch_list.iter().position(|s| s == symbol) else {
            return error(format!("Stock {} not found in watchlist.", symbol.py_str()));
        };
        self.watch_list.remove(i);
        vdict! { "status" => format!("Stock {} removed from watchlist successfully.", symbol.py_str()) }
    }

    fn get_watchlist(&self) -> Value {
        if !self.authenticated.truthy() {
            return Value::List(vec![Value::from(
                "Error: User not authenticated. Please log in to view the watchlist.",
            )]);
        }
        if let Some(filler) = &self.filler {
            let mut list = self.watch_list.clone();
            list.extend(filler.watch_list.iter().cloned());
            return Value::List(list);
        }
        vdict! { "watchlist" => Value::List(self.watch_list.clone()) }
    }

    fn get_transaction_history(&self, start_date: &Value, end_date: &Value) -> Result<Value, String> {
        if !self.authenticated.truthy() {
            return Ok(Value::List(vec![error("User not authenticated. Please log in to view transaction history.")]));
        }
        let start = if start_date.truthy() { parse_time(start_date, "%Y-%m-%d")? } else { DateTime::MIN };
        let end = if end_date.truthy() { parse_time(end_date, "%Y-%m-%d")? } else { DateTime::MAX };
        let mut filtered = Vec::new();
        for t in &self.transaction_history {
            let stamp = match t {
                Value::Dict(d) => d.get(&Key::from("timestamp")).ok_or("'timestamp'")?,
                Value::List(_) | Value::Tuple(_) => {
                    return Err("list indices must be integers or slices, not str".into());
                }
                Value::Str(_) => return Err("string indices must be integers, not 'str'".into()),
                other => return Err(format!("'{}' object is not subscriptable", other.type_name())),
            };
            let when = parse_time(stamp, "%Y-%m-%d %H:%M:%S")?;
            if start <= when && when <= end {
                filtered.push(t.clone());
            }
        }
        if let Some(filler) = &self.filler {
            filtered.extend(filler.transactions.iter().cloned());
        }
        Ok(vdict! { "transaction_history" => Value::List(filtered) })
    }

    fn get_available_stocks(&self, sector: &Value) -> Result<Value, String> {
        key_of(sector)?;
        let mut list: Vec<Value> = match sector.as_str() {
            Some("Technology") => ["AAPL", "GOOG", "MSFT", "NVDA"].map(Value::from).to_vec(),
            Some("Automobile") => ["TSLA", "F", "GM"].map(Value::from).to_vec(),
            _ => return Ok(vdict! { "stock_list" => Value::List(Vec::new()) }),
        };
        if let Some(filler) = &self.filler {
            let extra = if sector.as_str() == Some("Technology") { &filler.technology } else { &filler.automobile };
            list.extend(extra.iter().cloned());
        }
        Ok(vdict! { "stock_list" => Value::List(list) })
    }

    /// `self.stocks.get(symbol, {}).get(field, default)`.
    fn stock_field(&self, symbol: &Value, field: &str) -> Result<Option<&Value>, String> {
        match lookup(&self.stocks, symbol)? {
            None => Ok(None),
            Some(Value::Dict(d)) => Ok(d.get(&Key::from(field))),
            Some(other) => Err(format!("'{}' object has no attribute 'get'", other.type_name())),
        }
    }

    fn filter_stocks_by_price(&self, stocks: &[Value], min: &Value, max: &Value) -> Result<Value, String> {
        let mut out = Vec::new();
        for symbol in stocks {
            let price = self.stock_field(symbol, "price")?.cloned().unwrap_or(Value::Int(0));
            if ge(&price, min)? && le(&price, max)? {
                out.push(symbol.clone());
            }
        }
        Ok(vdict! { "filtered_stocks" => Value::List(out) })
    }

    fn add_to_watchlist(&mut self, stock: &Value) -> Result<Value, String> {
        if !self.watch_list.contains(stock) && lookup(&self.stocks, stock)?.is_some() {
            self.watch_list.push(stock.clone());
        }
        Ok(vdict! { "watchlist" => Value::List(self.watch_list.clone()) })
    }

    fn notify_price_change(&self, stocks: &[Value], threshold: &Value) -> Result<Value, String> {
        let mut changed = Vec::new();
        for symbol in stocks {
            let Some(stock) = lookup(&self.stocks, symbol)? else { continue };
            let change = match stock {
                Value::Dict(d) => d.get(&Key::from("percent_change")).ok_or("'percent_change'")?,
                other => return Err(format!("'{}' object is not subscriptable", other.type_name())),
            };
            let magnitude = match change {
                Value::Int(i) => Value::Int(i.abs()),
                Value::Bool(b) => Value::Int(i64::from(*b)),
                Value::Float(x) => Value::Float(x.abs()),
                other => return Err(format!("bad operand type for abs(): '{}'", other.type_name())),
            };
            if ge(&magnitude, threshold)? {
                changed.push(symbol.as_str().map(str::to_owned).ok_or_else(|| {
                    format!("sequence item {}: expected str instance, {} found", changed.len(), symbol.type_name())
                })?);
            }
        }
        let text = if changed.is_empty() {
            "No significant price changes in the selected stocks.".to_owned()
        } else {
            format!("Stocks {} have significant price changes.", changed.join(", "))
        };
        Ok(vdict! { "notification" => text })
    }
}

/// `scenario.get(key, default)` for a field that must be a dict.
fn dict_field(scenario: &Dict, key: &str, default: impl FnOnce() -> Dict) -> Result<Dict, String> {
    match scenario.get(&Key::from(key)) {
        None => Ok(default()),
        Some(Value::Dict(d)) => Ok(d.clone()),
        Some(other) => Err(format!("TradingBot.{key} must be a dict, got {}", other.type_name())),
    }
}

/// `scenario.get(key, default)` for a field that must be a list.
fn list_field(scenario: &Dict, key: &str, default: Vec<Value>) -> Result<Vec<Value>, String> {
    match scenario.get(&Key::from(key)) {
        None => Ok(default),
        Some(Value::List(v)) => Ok(v.clone()),
        Some(other) => Err(format!("TradingBot.{key} must be a list, got {}", other.type_name())),
    }
}

impl Environment for TradingBot {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, long_context: Option<&LongContext>) -> Result<(), String> {
        let field = |key: &str, default: Value| scenario.get(&Key::from(key)).cloned().unwrap_or(default);
        // Keys made of digits become ints, as JSON gives every key as a string.
        self.orders = dict_field(scenario, "orders", default_orders)?
            .into_iter()
            .map(|(k, v)| match k {
                Key::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => match s.parse::<i64>() {
                    Ok(i) => (Key::Int(i), v),
                    Err(_) => (Key::Str(s), v),
                },
                k => (k, v),
            })
            .collect();
        self.account_info = dict_field(scenario, "account_info", || {
            dict! { "account_id" => 12345, "balance" => 10000.0, "binding_card" => 1_974_202_140_965_533i64 }
        })?;
        self.authenticated = field("authenticated", Value::Bool(false));
        self.market_status = field("market_status", Value::from("Closed"));
        self.order_counter = field("order_counter", Value::Int(12446));
        self.stocks = dict_field(scenario, "stocks", default_stocks)?;
        self.watch_list = list_field(scenario, "watch_list", vec![Value::from("NVDA")])?;
        self.transaction_history = list_field(scenario, "transaction_history", Vec::new())?;
        self.long_context = long_context.is_some();
        self.filler = long_context.map(Filler::from).transpose()?.map(Arc::new);
        let seed = match field("random_seed", Value::Int(DEFAULT_SEED)) {
            Value::Int(i) => i,
            Value::Bool(b) => i64::from(b),
            other => return Err(format!("TradingBot.random_seed must be an int, got {}", other.type_name())),
        };
        self.random = PyRandom::new(seed);
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        let sig = match call.name.as_str() {
            "get_current_time"
            | "get_account_info"
            | "trading_get_login_status"
            | "trading_logout"
            | "get_watchlist"
            | "get_order_history" => SIG_NONE,
            "get_symbol_by_name" => SIG_NAME,
            "get_stock_info" | "remove_stock_from_watchlist" => SIG_SYMBOL,
            "get_order_details" | "cancel_order" => SIG_ORDER_ID,
            "place_order" => SIG_PLACE,
            "withdraw_funds" | "fund_account" => SIG_AMOUNT,
            "trading_login" => SIG_LOGIN,
            "get_transaction_history" => SIG_HISTORY,
            "get_available_stocks" => SIG_SECTOR,
            "filter_stocks_by_price" => SIG_FILTER,
            "add_to_watchlist" => SIG_STOCK,
            "notify_price_change" => SIG_NOTIFY,
            other => return Err(format!("'{CLASS}' object has no attribute '{other}'")),
        };
        let b = bind(CLASS, call, sig)?;
        match call.name.as_str() {
            "get_current_time" => Ok(vdict! { "current_time" => CURRENT_TIME.format_clock() }),
            "get_symbol_by_name" => Self::get_symbol_by_name(b.get("name")),
            "get_stock_info" => self.get_stock_info(b.get("symbol")),
            "get_order_details" => self.get_order_details(b.get("order_id")),
            "cancel_order" => self.cancel_order(b.get("order_id")),
            "place_order" => self.place_order(b.get("order_type"), b.get("symbol"), b.get("price"), b.get("amount")),
            "withdraw_funds" => self.withdraw_funds(b.get("amount")),
            "get_account_info" => Ok(if self.authenticated.truthy() {
                Value::Dict(self.account_info.clone())
            } else {
                error("User not authenticated. Please log in to view account information.")
            }),
            "trading_login" => Ok(if self.authenticated.truthy() {
                vdict! { "status" => "Already logged in" }
            } else {
                self.authenticated = Value::Bool(true);
                vdict! { "status" => "Logged in successfully" }
            }),
            "trading_get_login_status" => Ok(vdict! { "status" => self.authenticated.truthy() }),
            "trading_logout" => Ok(if self.authenticated.truthy() {
                self.authenticated = Value::Bool(false);
                vdict! { "status" => "Logged out successfully" }
            } else {
                vdict! { "status" => "No user is currently logged in" }
            }),
            "fund_account" => self.fund_account(b.get("amount")),
            "remove_stock_from_watchlist" => Ok(self.remove_stock_from_watchlist(b.get("symbol"))),
            "get_watchlist" => Ok(self.get_watchlist()),
            "get_order_history" => Ok(if self.authenticated.truthy() {
                vdict! { "history" => Value::List(self.orders.keys().map(Key::to_value).collect()) }
            } else {
                Value::List(vec![error("User not authenticated. Please log in to view order history.")])
            }),
            "get_transaction_history" => self.get_transaction_history(b.get("start_date"), b.get("end_date")),
            "get_available_stocks" => self.get_available_stocks(b.get("sector")),
            "filter_stocks_by_price" => {
                self.filter_stocks_by_price(b.list("stocks")?, b.get("min_price"), b.get("max_price"))
            }
            "add_to_watchlist" => self.add_to_watchlist(b.get("stock")),
            "notify_price_change" => self.notify_price_change(b.list("stocks")?, b.get("threshold")),
            _ => unreachable!("every name was matched above"),
        }
    }

    fn state(&self) -> Dict {
        dict! {
            "orders" => Value::Dict(self.orders.clone()),
            "account_info" => Value::Dict(self.account_info.clone()),
            "authenticated" => self.authenticated.clone(),
            "market_status" => self.market_status.clone(),
            "order_counter" => self.order_counter.clone(),
            "stocks" => Value::Dict(self.stocks.clone()),
            "watch_list" => Value::List(self.watch_list.clone()),
            "transaction_history" => Value::List(self.transaction_history.clone()),
            "long_context" => self.long_context,
        }
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;

    /// Runs one call and renders it as BFCL's harness does.
    fn run(bot: &mut TradingBot, text: &str) -> String {
        let call = parse_calls(text).unwrap().remove(0);
        match bot.call(&call) {
            Ok(v) => v.to_result_string(),
            Err(e) => format!("Error during execution: {e}"),
        }
    }

    fn scenario(json: &str) -> Dict {
        match Value::from_json(&serde_json::from_str(json).unwrap()) {
            Value::Dict(d) => d,
            _ => unreachable!(),
        }
    }

    fn logged_in(balance: &str) -> TradingBot {
        let mut bot = TradingBot::default();
        let cfg = format!(
            r#"{{"authenticated": true, "market_status": "Open", "order_counter": 12447,
                "account_info": {{"account_id": 777, "balance": {balance}, "binding_card": 1}},
                "stocks": {{"AAPL": {{"price": 227.16, "percent_change": 0.17}},
                            "TSLA": {{"price": 667.92, "percent_change": -0.12}}}},
                "watch_list": ["NVDA"], "transaction_history": []}}"#
        );
        bot.load_scenario(&scenario(&cfg), None).unwrap();
        bot
    }

    // Every expectation below is what BFCL's Python class returns (TZ=UTC, CPython 3.11).

    #[test]
    fn default_state_and_lookups() {
        let mut bot = TradingBot::default();
        assert_eq!(bot.functions().len(), 20);
        assert_eq!(run(&mut bot, "get_current_time()"), r#"{"current_time": "10:30 AM"}"#);
        assert_eq!(run(&mut bot, "get_symbol_by_name(name='Gorilla')"), r#"{"symbol": "GORI"}"#);
        assert_eq!(run(&mut bot, "get_symbol_by_name('Unknown Co')"), r#"{"symbol": "Stock not found"}"#);
        assert_eq!(
            run(&mut bot, "get_stock_info(symbol='ZETA')"),
            r#"{"price": 22.09, "percent_change": -0.05, "volume": 0.789, "MA(5)": 22.12, "MA(20)": 22.34}"#
        );
        assert_eq!(
            run(&mut bot, "get_order_details(order_id=99)"),
            r#"{"error": "Order with ID 99 not found.Here is the list of orders_id: [12345, 12446]"}"#
        );
        assert_eq!(
            run(&mut bot, "get_order_history()"),
            "[{'error': 'User not authenticated. Please log in to view order history.'}]"
        );
        assert_eq!(
            run(&mut bot, "get_watchlist()"),
            "['Error: User not authenticated. Please log in to view the watchlist.']"
        );
        assert_eq!(run(&mut bot, "trading_get_login_status()"), r#"{"status": false}"#);
        assert_eq!(
            run(&mut bot, "trading_login(username='u', password='p')"),
            r#"{"status": "Logged in successfully"}"#
        );
        assert_eq!(run(&mut bot, "trading_login(username='u', password='p')"), r#"{"status": "Already logged in"}"#);
        // The default counter collides with an existing order, which is replaced in place.
        assert_eq!(
            run(&mut bot, "place_order(order_type='Buy', symbol='ZETA', price=22.09, amount=7)"),
            r#"{"order_id": 12446, "order_type": "Buy", "status": "Pending", "price": 22.09, "amount": 7}"#
        );
        assert_eq!(run(&mut bot, "get_order_history()"), r#"{"history": [12345, 12446]}"#);
        assert_eq!(
            run(&mut bot, "withdraw_funds(amount=5.5)"),
            r#"{"error": "Market is closed. Transactions are not allowed."}"#
        );
    }

    #[test]
    fn orders() {
        let mut bot = logged_in("10000.0");
        assert_eq!(
            run(&mut bot, "place_order(order_type='Buy', symbol='MSFT', price=10.0, amount=1)"),
            r#"{"error": "Invalid stock symbol: MSFT"}"#
        );
        assert_eq!(
            run(&mut bot, "place_order(order_type='Buy', symbol='AAPL', price=10.0, amount=0)"),
            r#"{"error": "Price and amount must be positive values."}"#
        );
        assert_eq!(
            run(&mut bot, "place_order(order_type='BUY', symbol='AAPL', price=227.16, amount=100)"),
            r#"{"error": "Insufficient funds: required $22716.00 but only $10000.00 available."}"#
        );
        assert_eq!(
            run(&mut bot, "place_order(order_type='Hold', symbol='TSLA', price=220, amount=3)"),
            r#"{"order_id": 12447, "order_type": "Hold", "status": "Pending", "price": 220.0, "amount": 3}"#
        );
        assert_eq!(
            run(&mut bot, "place_order(order_type='Buy', symbol='AAPL', price=0.1, amount=2.5)"),
            r#"{"order_id": 12448, "order_type": "Buy", "status": "Pending", "price": 0.1, "amount": 2.5}"#
        );
        assert_eq!(bot.state()[&Key::from("order_counter")], Value::Int(12449));
        assert_eq!(run(&mut bot, "cancel_order(order_id=1)"), r#"{"error": "Order with ID 1 not found."}"#);
        assert_eq!(run(&mut bot, "cancel_order(12447)"), r#"{"order_id": 12447, "status": "Cancelled"}"#);
        assert_eq!(
            run(&mut bot, "get_order_details(12447)"),
            r#"{"id": 12447, "order_type": "Hold", "symbol": "TSLA", "price": 220.0, "amount": 3, "status": "Cancelled"}"#
        );
        assert_eq!(run(&mut bot, "cancel_order(order_id='12447')"), r#"{"error": "Order with ID 12447 not found."}"#);

        let mut bot = TradingBot::default();
        let cfg = r#"{"orders": {"12345": {"status": "Completed"}, "order_type": "Buy", "0777": {"symbol": "TSLA"}}}"#;
        bot.load_scenario(&scenario(cfg), None).unwrap();
        assert_eq!(
            run(&mut bot, "cancel_order(order_id=12345)"),
            r#"{"error": "Can't cancel order 12345. Order is already completed."}"#
        );
        assert_eq!(run(&mut bot, "cancel_order(order_id=777)"), "Error during execution: 'status'");
        assert_eq!(
            run(&mut bot, "cancel_order(order_id='order_type')"),
            "Error during execution: string indices must be integers, not 'str'"
        );
        assert_eq!(
            run(&mut bot, "get_order_details(order_id=5)"),
            r#"{"error": "Order with ID 5 not found.Here is the list of orders_id: [12345, 'order_type', 777]"}"#
        );
    }

    #[test]
    fn funds_follow_python_arithmetic_and_draw_timestamps() {
        let mut bot = logged_in("5000.0");
        assert_eq!(run(&mut bot, "withdraw_funds(amount=0)"), r#"{"error": "Transaction amount must be positive."}"#);
        assert_eq!(
            run(&mut bot, "withdraw_funds(amount=5000.01)"),
            r#"{"error": "Insufficient funds for withdrawal."}"#
        );
        run(&mut bot, "withdraw_funds(amount=0.1)");
        assert_eq!(
            run(&mut bot, "withdraw_funds(amount=0.1)"),
            r#"{"status": "Withdrawal successful", "new_balance": 4999.799999999999}"#
        );
        assert_eq!(
            run(&mut bot, "fund_account(amount=3)"),
            r#"{"status": "Account funded successfully", "new_balance": 5002.799999999999}"#
        );
        assert_eq!(
            run(&mut bot, "get_transaction_history()"),
            r#"{"transaction_history": [{"type": "withdrawal", "amount": 0.1, "timestamp": "2024-09-02 05:40:15"}, {"type": "withdrawal", "amount": 0.1, "timestamp": "2024-09-01 12:26:34"}, {"type": "deposit", "amount": 3, "timestamp": "2024-09-02 04:29:48"}]}"#
        );

        let mut bot = logged_in("100");
        assert_eq!(
            run(&mut bot, "fund_account(amount=5)"),
            r#"{"status": "Account funded successfully", "new_balance": 105}"#
        );
        assert_eq!(run(&mut bot, "fund_account(amount=-1)"), r#"{"error": "Funding amount must be positive."}"#);
        assert_eq!(
            run(&mut bot, "place_order(order_type='Buy', symbol='AAPL', price=300, amount=1)"),
            r#"{"error": "Insufficient funds: required $300.00 but only $105.00 available."}"#
        );
    }

    #[test]
    fn transaction_history_filters() {
        let mut bot = TradingBot::default();
        let cfg = r#"{"authenticated": true, "transaction_history": [
            {"type": "deposit", "amount": 500.0, "timestamp": "2024-07-01 09:00:00"},
            {"type": "withdrawal", "amount": 20, "timestamp": "2024-08-31 23:59:59"},
            {"type": "deposit", "amount": 3.0, "timestamp": "2024-9-2 1:2:3"}]}"#;
        bot.load_scenario(&scenario(cfg), None).unwrap();
        assert_eq!(
            run(&mut bot, "get_transaction_history(start_date='2024-9-2')"),
            r#"{"transaction_history": [{"type": "deposit", "amount": 3.0, "timestamp": "2024-9-2 1:2:3"}]}"#
        );
        assert_eq!(
            run(&mut bot, "get_transaction_history(start_date='2024-08-31', end_date='2024-09-01')"),
            r#"{"transaction_history": [{"type": "withdrawal", "amount": 20, "timestamp": "2024-08-31 23:59:59"}]}"#
        );
        assert_eq!(
            run(&mut bot, "get_transaction_history('2024-07-01', '2024-07-01')"),
            r#"{"transaction_history": []}"#
        );
        assert_eq!(
            run(&mut bot, "get_transaction_history(start_date='2024-09-01 10:00')"),
            "Error during execution: unconverted data remains:  10:00"
        );
        assert_eq!(
            run(&mut bot, "get_transaction_history(end_date='2024-02-30')"),
            "Error during execution: day is out of range for month"
        );
    }

    #[test]
    fn watch_list_sectors_and_notifications() {
        let mut bot = logged_in("1.0");
        assert_eq!(run(&mut bot, "add_to_watchlist(stock='MSFT')"), r#"{"watchlist": ["NVDA"]}"#);
        assert_eq!(run(&mut bot, "add_to_watchlist(stock='AAPL')"), r#"{"watchlist": ["NVDA", "AAPL"]}"#);
        assert_eq!(
            run(&mut bot, "remove_stock_from_watchlist(symbol='MSFT')"),
            r#"{"error": "Stock MSFT not found in watchlist."}"#
        );
        assert_eq!(
            run(&mut bot, "remove_stock_from_watchlist(symbol='NVDA')"),
            r#"{"status": "Stock NVDA removed from watchlist successfully."}"#
        );
        assert_eq!(run(&mut bot, "get_watchlist()"), r#"{"watchlist": ["AAPL"]}"#);
        assert_eq!(run(&mut bot, "get_available_stocks(sector='Energy')"), r#"{"stock_list": []}"#);
        assert_eq!(
            run(&mut bot, "filter_stocks_by_price(stocks=['AAPL', 'TSLA', 'NOPE'], min_price=0, max_price=227.16)"),
            r#"{"filtered_stocks": ["AAPL", "NOPE"]}"#
        );
        assert_eq!(
            run(&mut bot, "notify_price_change(stocks=['AAPL', 'TSLA', 'NOPE'], threshold=0.12)"),
            r#"{"notification": "Stocks AAPL, TSLA have significant price changes."}"#
        );
        assert_eq!(
            run(&mut bot, "notify_price_change(stocks=['AAPL'], threshold=1)"),
            r#"{"notification": "No significant price changes in the selected stocks."}"#
        );
    }

    #[test]
    fn long_context_filler() {
        let lc = LongContext {
            constants: dict! {
                "WATCH_LIST_EXTENSION" => Value::List(vec![Value::from("JHGUN"), Value::Ellipsis]),
                "TRANSACTION_HISTORY_EXTENSION" => Value::List(vec![vdict! { "type" => "deposit" }]),
                "MA_5_EXTENSION" => vec![1.5],
                "MA_20_EXTENSION" => vec![2.5],
                "TECHNOLOGY_EXTENSION" => vec!["AAPL", "LGY"],
                "AUTOMOBILE_EXTENSION" => vec!["TSLA"],
                "ORDER_DETAIL_EXTENSION" => vdict! { "risks" => "{symbol} {{x}} {symbol}." },
            },
        };
        let mut bot = TradingBot::default();
        bot.load_scenario(&scenario(r#"{"authenticated": true}"#), Some(&lc)).unwrap();
        assert_eq!(bot.state()[&Key::from("long_context")], Value::Bool(true));
        assert_eq!(run(&mut bot, "get_watchlist()"), "['NVDA', 'JHGUN', Ellipsis]");
        assert_eq!(
            run(&mut bot, "get_available_stocks(sector='Technology')"),
            r#"{"stock_list": ["AAPL", "GOOG", "MSFT", "NVDA", "AAPL", "LGY"]}"#
        );
        assert_eq!(
            run(&mut bot, "get_stock_info(symbol='NVDA')"),
            r#"{"price": 220.34, "percent_change": 0.34, "volume": 1.234, "MA(5)": [1.5], "MA(20)": [2.5]}"#
        );
        assert_eq!(
            run(&mut bot, "get_order_details(order_id=12446)"),
            r#"{"id": 12446, "order_type": "Sell", "symbol": "GOOG", "price": 2840.56, "amount": 5, "status": "Pending", "metadata": {"risks": "GOOG {x} GOOG."}}"#
        );
        assert_eq!(
            run(&mut bot, "get_transaction_history(start_date='2030-01-01')"),
            r#"{"transaction_history": [{"type": "deposit"}]}"#
        );
        // The filler is only returned, never stored.
        assert_eq!(bot.state()[&Key::from("watch_list")], Value::from(vec!["NVDA"]));
    }

    #[test]
    fn python_number_semantics() {
        let cmp = |a: Value, b: Value| py_cmp(&a, &b, "<").unwrap();
        assert_eq!(
            cmp(Value::Int(9_007_199_254_740_993), Value::Float(9_007_199_254_740_992.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp(Value::Float(0.5), Value::Int(0)), Some(Ordering::Greater));
        assert_eq!(cmp(Value::Int(-1), Value::Float(-0.5)), Some(Ordering::Less));
        assert_eq!(cmp(Value::Float(f64::NAN), Value::Int(0)), None);
        assert_eq!(
            py_cmp(&Value::from("a"), &Value::Int(0), "<=").unwrap_err(),
            "'<=' not supported between instances of 'str' and 'int'"
        );
        assert_eq!(key_of(&Value::Float(12.0)).unwrap(), Some(Key::Int(12)));
        assert_eq!(key_of(&Value::Bool(true)).unwrap(), Some(Key::Int(1)));
        assert_eq!(key_of(&Value::List(vec![])).unwrap_err(), "unhashable type: 'list'");
        assert_eq!(format_symbol("{other}", "X").unwrap_err(), "'other'");
        assert_eq!(fixed2(&Value::Int(5)), "5.00");
        assert_eq!(fixed2(&Value::Float(0.125)), "0.12");
    }
}
