//! `TravelAPI`: a travel-booking service with an access token, registered credit cards,
//! flight bookings paid from those cards, insurance, an optional budget limit, currency
//! exchange and traveller checks.
//!
//! IDs and tokens come from `random.Random(seed)` in the reference's draw order. Scenario
//! data is kept as Python values (cards and bookings in the scenarios carry many shapes of
//! record), and balances follow Python's `int`/`float` arithmetic.

mod tables;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::call::Call;
use crate::env::{Default, Environment, LongContext, Param, bind, opt, req};
use crate::pyrandom::PyRandom;
use crate::value::{Dict, Key, Value, str_repr};
use crate::{dict, vdict};

use tables::{AIRPORT_BY_CITY, AIRPORTS, BASE_COSTS, DECIMAL_ZEROS, EXCHANGE_RATES, NON_DECIMAL_DIGITS, Rate};

const CLASS: &str = "TravelAPI";
const DEFAULT_SEED: i64 = 141_053;

const FUNCTIONS: &[&str] = &[
    "authenticate_travel",
    "travel_get_login_status",
    "get_budget_fiscal_year",
    "register_credit_card",
    "get_flight_cost",
    "get_credit_card_balance",
    "book_flight",
    "retrieve_invoice",
    "get_booking_history",
    "list_all_airports",
    "cancel_booking",
    "compute_exchange_rate",
    "verify_traveler_information",
    "set_budget_limit",
    "get_nearest_airport_by_city",
    "purchase_insurance",
    "contact_customer_support",
    "get_all_credit_cards",
];

const SIG_AUTHENTICATE: &[Param] = &[
    req("client_id"),
    req("client_secret"),
    req("refresh_token"),
    req("grant_type"),
    req("user_first_name"),
    req("user_last_name"),
];
const SIG_NONE: &[Param] = &[];
const SIG_FISCAL_YEAR: &[Param] = &[opt("lastModifiedAfter", Default::None), opt("includeRemoved", Default::None)];
const SIG_REGISTER_CARD: &[Param] = &[
    req("access_token"),
    req("card_number"),
    req("expiration_date"),
    req("cardholder_name"),
    req("card_verification_number"),
];
const SIG_FLIGHT_COST: &[Param] = &[req("travel_from"), req("travel_to"), req("travel_date"), req("travel_class")];
const SIG_CARD_BALANCE: &[Param] = &[req("access_token"), req("card_id")];
const SIG_BOOK_FLIGHT: &[Param] = &[
    req("access_token"),
    req("card_id"),
    req("travel_date"),
    req("travel_from"),
    req("travel_to"),
    req("travel_class"),
];
const SIG_INVOICE: &[Param] =
    &[req("access_token"), opt("booking_id", Default::None), opt("insurance_id", Default::None)];
const SIG_TOKEN: &[Param] = &[req("access_token")];
const SIG_CANCEL: &[Param] = &[req("access_token"), req("booking_id")];
const SIG_EXCHANGE: &[Param] = &[req("base_currency"), req("target_currency"), req("value")];
const SIG_VERIFY: &[Param] = &[req("first_name"), req("last_name"), req("date_of_birth"), req("passport_number")];
const SIG_BUDGET: &[Param] = &[req("access_token"), req("budget_limit")];
const SIG_NEAREST: &[Param] = &[req("location")];
const SIG_INSURANCE: &[Param] =
    &[req("access_token"), req("insurance_type"), req("booking_id"), req("insurance_cost"), req("card_id")];
const SIG_SUPPORT: &[Param] = &[req("booking_id"), req("message")];

const SUPPORT_REPLY: &str = "Thank you for contacting customer support. Your message has been received and we will get \
                             back to you shortly.";

/// The travel-booking environment.
#[derive(Debug, Clone)]
pub struct TravelApi {
    credit_card_list: Dict,
    booking_record: Dict,
    access_token: Value,
    token_type: Value,
    token_expires_in: Value,
    token_scope: Value,
    user_first_name: Value,
    user_last_name: Value,
    budget_limit: Value,
    long_context: bool,
    random: PyRandom,
    /// The date `verify_traveler_information` takes as today; the current UTC date when unset.
    today: Option<(i64, u32, u32)>,
}

impl std::default::Default for TravelApi {
    fn default() -> Self {
        TravelApi {
            credit_card_list: Dict::new(),
            booking_record: Dict::new(),
            access_token: Value::None,
            token_type: Value::None,
            token_expires_in: Value::None,
            token_scope: Value::None,
            user_first_name: Value::None,
            user_last_name: Value::None,
            budget_limit: Value::None,
            long_context: false,
            random: PyRandom::new(DEFAULT_SEED),
            today: None,
        }
    }
}

/// A fresh `TravelAPI`.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(TravelApi::default()))
}

impl TravelApi {
    /// Fixes the date age checks count from (year, month, day), instead of today's UTC date.
    pub fn set_today(&mut self, year: i64, month: u32, day: u32) {
        self.today = Some((year, month, day));
    }

    fn token_expired(&self) -> bool {
        self.token_expires_in == Value::Int(0)
    }

    fn card_mut(&mut self, key: &Key) -> Result<&mut Dict, String> {
        match self.credit_card_list.get_mut(key) {
            Some(Value::Dict(d)) => Ok(d),
            Some(other) => Err(not_subscriptable(other)),
            None => Err(key.to_value().repr()),
        }
    }

    fn authenticate_travel(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_AUTHENTICATE)?;
        let grant_type = b.get("grant_type").clone();
        self.token_expires_in = Value::Int(2);
        self.access_token = Value::Str(self.random.randint(100_000, 999_999).to_string());
        self.token_type = Value::from("Bearer");
        self.token_scope = grant_type.clone();
        self.user_first_name = b.get("user_first_name").clone();
        self.user_last_name = b.get("user_last_name").clone();
        Ok(vdict! {
            "expires_in" => 2,
            "access_token" => self.access_token.clone(),
            "token_type" => "Bearer",
            "scope" => grant_type,
        })
    }

    fn travel_get_login_status(&self, call: &Call) -> Result<Value, String> {
        bind(CLASS, call, SIG_NONE)?;
        let logged_out = self.token_expires_in.is_none() || self.token_expired();
        Ok(vdict! { "status" => !logged_out })
    }

    fn get_budget_fiscal_year(&self, call: &Call) -> Result<Value, String> {
        bind(CLASS, call, SIG_FISCAL_YEAR)?;
        Ok(vdict! { "budget_fiscal_year" => "2018" })
    }

    fn register_credit_card(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_REGISTER_CARD)?;
        if self.token_expires_in.is_none() {
            return Ok(error("Token not initialized"));
        }
        if self.token_expired() {
            return Ok(error("Token expired"));
        }
        if *b.get("access_token") != self.access_token {
            return Ok(error("Invalid access token"));
        }
        // The reference looks the card number up among the card IDs.
        if contains(&self.credit_card_list, b.get("card_number"))? {
            return Ok(error("Card already registered"));
        }
        let card_id = self.random.randint(100_000_000_000, 999_999_999_999).to_string();
        let balance = self.random.randint(10_000, 99_999);
        self.credit_card_list.insert(
            Key::from(card_id.as_str()),
            vdict! {
                "card_number" => b.get("card_number").clone(),
                "expiration_date" => b.get("expiration_date").clone(),
                "cardholder_name" => b.get("cardholder_name").clone(),
                "card_verification_number" => b.get("card_verification_number").clone(),
                "balance" => balance,
            },
        );
        Ok(vdict! { "card_id" => card_id })
    }

    /// The fare list and the fare of the requested route. With long context the list holds
    /// the fare of every route for the class and date.
    fn flight_cost(&self, from: &Value, to: &Value, date: &Value, class: &Value) -> Result<(Vec<Value>, f64), String> {
        let base = match (from.as_str(), to.as_str()) {
            (Some(f), Some(t)) => BASE_COSTS.iter().find(|(a, b, _)| *a == f && *b == t).map(|r| r.2),
            _ => None,
        };
        let Some(base) = base else {
            return Err("No available route for the given airports.".into());
        };
        let factor = match class.as_str() {
            Some("economy") => 1,
            Some("business") => 2,
            Some("first") => 5,
            _ => return Err("Invalid travel class. Options are: economy, business, first.".into()),
        };
        let multiplier = if digit_sum(date)? % 2 == 0 { 2 } else { 1 };
        let cost = (base * factor * multiplier) as f64;
        let list = if self.long_context {
            BASE_COSTS.iter().map(|(_, _, b)| Value::Float((b * factor * multiplier) as f64)).collect()
        } else {
            vec![Value::Float(cost)]
        };
        Ok((list, cost))
    }

    fn get_flight_cost(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_FLIGHT_COST)?;
        let (list, _) =
            self.flight_cost(b.get("travel_from"), b.get("travel_to"), b.get("travel_date"), b.get("travel_class"))?;
        Ok(vdict! { "travel_cost_list" => Value::List(list) })
    }

    fn get_credit_card_balance(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_CARD_BALANCE)?;
        if self.token_expired() {
            return Ok(error("Token expired"));
        }
        if *b.get("access_token") != self.access_token {
            return Ok(error("Invalid access token"));
        }
        let Some(card) = lookup(&self.credit_card_list, b.get("card_id"))? else {
            let ids = Value::List(self.credit_card_list.keys().map(Key::to_value).collect());
            return Ok(error(&format!("Card not registered. Here are a list of card_id's: {}", ids.repr())));
        };
        Ok(vdict! { "card_balance" => get_item(card, "balance")?.clone() })
    }

    fn book_flight(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_BOOK_FLIGHT)?;
        let failed = |msg: &str| Ok(vdict! { "booking_status" => false, "error" => msg });
        if self.token_expired() {
            return failed("Token expired");
        }
        if *b.get("access_token") != self.access_token {
            return failed("Invalid access token");
        }
        let card_id = b.get("card_id");
        let Some(card) = lookup(&self.credit_card_list, card_id)? else {
            return failed("Card not registered");
        };
        if !contains_str(card, "balance")? {
            return failed("Balance not found");
        }
        let (from, to) = (b.get("travel_from"), b.get("travel_to"));
        let is_airport = |v: &Value| v.as_str().is_some_and(|s| AIRPORTS.contains(&s));
        if !is_airport(from) {
            return failed(&format!("Invalid departure airport code: {}", from.py_str()));
        }
        if !is_airport(to) {
            return failed(&format!("Invalid destination airport code: {}", to.py_str()));
        }
        let date = b.get("travel_date");
        if parse_ymd(strptime_arg(date)?).is_none() {
            return failed("Invalid date format. Use YYYY-MM-DD.");
        }
        let class = b.get("travel_class");
        if !matches!(class.as_str(), Some("economy" | "business" | "first")) {
            // The reference prints a Python set here, whose order follows the per-process
            // string hash seed; this is one of its orders.
            return failed("Invalid travel class. Must be one of {'economy', 'business', 'first'}");
        }
        let cost = match self.flight_cost(from, to, date, class) {
            Ok((_, cost)) => cost,
            Err(e) => return failed(&e),
        };
        let balance = get_item(card, "balance")?.clone();
        if py_lt(&balance, &Value::Float(cost))? {
            return failed("Insufficient funds");
        }
        if !self.budget_limit.is_none() && py_lt(&balance, &self.budget_limit)? {
            return failed("Balance is less than budget limit");
        }
        let new_balance = py_arith(&balance, &Value::Float(cost), Op::SubAssign)?;
        let card_key = hash_key(card_id)?.expect("looked up above");
        self.card_mut(&card_key)?.insert(Key::from("balance"), new_balance);
        let booking_id = self.random.randint(1_000_000, 9_999_999).to_string();
        let transaction_id = self.random.randint(10_000_000, 99_999_999).to_string();
        self.booking_record.insert(
            Key::from(booking_id.as_str()),
            vdict! {
                "card_id" => card_id.clone(),
                "travel_date" => date.clone(),
                "travel_from" => from.clone(),
                "travel_to" => to.clone(),
                "travel_class" => class.clone(),
                "travel_cost" => cost,
                "transaction_id" => transaction_id.as_str(),
            },
        );
        let history = if self.long_context { self.booking_record.clone() } else { Dict::new() };
        Ok(vdict! {
            "booking_id" => booking_id,
            "transaction_id" => transaction_id,
            "booking_status" => true,
            "booking_history" => history,
        })
    }

    fn retrieve_invoice(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_INVOICE)?;
        if self.token_expired() {
            return Ok(error("Token expired"));
        }
        if *b.get("access_token") != self.access_token {
            return Ok(error("Invalid access token"));
        }
        let booking_id = b.get("booking_id");
        let Some(record) = lookup(&self.booking_record, booking_id)? else {
            return Ok(error("Booking not found"));
        };
        let mut invoice = dict! { "booking_id" => booking_id.clone() };
        for field in ["travel_date", "travel_from", "travel_to", "travel_class", "travel_cost", "transaction_id"] {
            invoice.insert(Key::from(field), get_item(record, field)?.clone());
        }
        Ok(vdict! { "invoice" => invoice })
    }

    fn get_booking_history(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_TOKEN)?;
        if self.token_expired() {
            return Ok(error("Token expired"));
        }
        if *b.get("access_token") != self.access_token {
            return Ok(error("Invalid access token"));
        }
        Ok(vdict! { "booking_history" => self.booking_record.clone() })
    }

    fn list_all_airports(&self, call: &Call) -> Result<Value, String> {
        bind(CLASS, call, SIG_NONE)?;
        Ok(Value::from(AIRPORTS.to_vec()))
    }

    fn cancel_booking(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_CANCEL)?;
        let failed = |msg: &str| Ok(vdict! { "cancel_status" => false, "error" => msg });
        if self.token_expired() {
            return failed("Token expired");
        }
        if *b.get("access_token") != self.access_token {
            return failed("Invalid access token");
        }
        let Some(record) = lookup(&self.booking_record, b.get("booking_id"))? else {
            return failed("Booking not found");
        };
        let card_id = get_item(record, "card_id")?.clone();
        let cost = get_item(record, "travel_cost")?.clone();
        let card_key = hash_key(&card_id)?.ok_or_else(|| card_id.repr())?;
        let card = self.card_mut(&card_key)?;
        let balance = card.get(&Key::from("balance")).ok_or_else(|| str_repr("balance"))?;
        let new_balance = py_arith(balance, &cost, Op::AddAssign)?;
        card.insert(Key::from("balance"), new_balance);
        let booking_key = hash_key(b.get("booking_id"))?.expect("looked up above");
        self.booking_record.shift_remove(&booking_key);
        Ok(vdict! { "cancel_status" => true })
    }

    fn compute_exchange_rate(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_EXCHANGE)?;
        let (base, target) = (b.get("base_currency").as_str(), b.get("target_currency").as_str());
        let value = b.get("value");
        for &(from, to, rate) in EXCHANGE_RATES {
            if base == Some(from) && target == Some(to) {
                let product = match (value, rate) {
                    (Value::Int(_) | Value::Bool(_), Rate::Int(r)) => (int_of(value) as i128 * r as i128) as f64,
                    (_, Rate::Int(r)) => b.float("value")? * r as f64,
                    (_, Rate::Float(r)) => b.float("value")? * r,
                };
                return Ok(vdict! { "exchanged_value" => product });
            } else if base == Some(to) && target == Some(from) {
                let quotient = match rate {
                    Rate::Int(r) => b.float("value")? / r as f64,
                    Rate::Float(r) => b.float("value")? / r,
                };
                return Ok(vdict! { "exchanged_value" => round2(quotient) });
            }
        }
        Err("No available exchange rate for the given currencies.".into())
    }

    fn verify_traveler_information(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_VERIFY)?;
        let failed = |msg: &str| Ok(vdict! { "verification_status" => false, "verification_failure" => msg });
        let (first, last) = (b.get("first_name"), b.get("last_name"));
        if self.user_first_name != *first || self.user_last_name != *last {
            return failed(&format!(
                "Cannot book flight information for another user.Expected {} {}, got {} {}",
                self.user_first_name.py_str(),
                self.user_last_name.py_str(),
                first.py_str(),
                last.py_str()
            ));
        }
        let Some((by, bm, bd)) = parse_ymd(strptime_arg(b.get("date_of_birth"))?) else {
            return failed("Invalid date of birth format. Please use YYYY-MM-DD.");
        };
        let (ty, tm, td) = self.today.unwrap_or_else(utc_today);
        let age = ty - by - i64::from((tm, td) < (bm, bd));
        if age < 18 {
            return failed("Traveler must be at least 18 years old.");
        }
        let passport = b.get("passport_number");
        let Some(passport) = passport.as_str() else {
            return Err(format!("'{}' object has no attribute 'startswith'", passport.type_name()));
        };
        if !passport.starts_with("US") {
            return failed("Passport must be issued by the United States.");
        }
        Ok(vdict! { "verification_status" => true })
    }

    fn set_budget_limit(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_BUDGET)?;
        if self.token_expired() {
            return Ok(error("Token expired"));
        }
        if *b.get("access_token") != self.access_token {
            return Ok(error("Invalid access token"));
        }
        let limit = py_float(b.get("budget_limit"))?;
        self.budget_limit = Value::Float(limit);
        Ok(vdict! { "budget_limit" => limit })
    }

    fn get_nearest_airport_by_city(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_NEAREST)?;
        let location = b.get("location");
        hash_key(location)?;
        let airport = location
            .as_str()
            .and_then(|city| AIRPORT_BY_CITY.iter().find(|(c, _)| *c == city))
            .map_or("Unknown", |(_, code)| *code);
        Ok(vdict! { "nearest_airport" => airport })
    }

    fn purchase_insurance(&mut self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_INSURANCE)?;
        let failed = |msg: &str| Ok(vdict! { "insurance_status" => false, "error" => msg });
        if self.token_expired() {
            return failed("Token expired");
        }
        if *b.get("access_token") != self.access_token {
            return failed("Invalid access token");
        }
        let cost = b.get("insurance_cost");
        if !self.budget_limit.is_none() && py_lt(&self.budget_limit, cost)? {
            return failed("Exceeded budget limit");
        }
        if !contains(&self.booking_record, b.get("booking_id"))? {
            return failed("Booking not found");
        }
        let Some(card_key) = hash_key(b.get("card_id"))?.filter(|k| self.credit_card_list.contains_key(k)) else {
            return failed("Credit card not registered");
        };
        let card = self.card_mut(&card_key)?;
        let balance = card.get(&Key::from("balance")).ok_or_else(|| str_repr("balance"))?;
        let new_balance = py_arith(balance, cost, Op::SubAssign)?;
        card.insert(Key::from("balance"), new_balance);
        let insurance_id = self.random.randint(100_000_000, 999_999_999).to_string();
        Ok(vdict! { "insurance_id" => insurance_id, "insurance_status" => true })
    }

    fn contact_customer_support(&self, call: &Call) -> Result<Value, String> {
        let b = bind(CLASS, call, SIG_SUPPORT)?;
        if !contains(&self.booking_record, b.get("booking_id"))? {
            return Ok(error("Booking not found"));
        }
        Ok(vdict! { "customer_support_message" => SUPPORT_REPLY })
    }

    fn get_all_credit_cards(&self, call: &Call) -> Result<Value, String> {
        bind(CLASS, call, SIG_NONE)?;
        Ok(vdict! { "credit_card_list" => self.credit_card_list.clone() })
    }
}

impl Environment for TravelApi {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, long_context: Option<&LongContext>) -> Result<(), String> {
        let get = |key: &str| scenario.get(&Key::from(key)).cloned().unwrap_or(Value::None);
        let dict_field = |key: &str| match scenario.get(&Key::from(key)) {
            None => Ok(Dict::new()),
            Some(Value::Dict(d)) => Ok(d.clone()),
            Some(other) => Err(format!("`{key}` must be a dict, got {}", other.type_name())),
        };
        let seed = match scenario.get(&Key::from("random_seed")) {
            None => DEFAULT_SEED,
            Some(Value::Int(i)) => *i,
            Some(other) => return Err(format!("`random_seed` must be an integer, got {}", other.type_name())),
        };
        self.random = PyRandom::new(seed);
        self.credit_card_list = dict_field("credit_card_list")?;
        self.booking_record = dict_field("booking_record")?;
        self.access_token = get("access_token");
        self.token_type = get("token_type");
        self.token_expires_in = get("token_expires_in");
        self.token_scope = get("token_scope");
        self.user_first_name = get("user_first_name");
        self.user_last_name = get("user_last_name");
        self.budget_limit = get("budget_limit");
        self.long_context = long_context.is_some();
        if let Some(lc) = long_context {
            for (name, target) in [
                ("CREDIT_CARD_EXTENSION", &mut self.credit_card_list),
                ("BOOKING_RECORD_EXTENSION", &mut self.booking_record),
            ] {
                let extension = lc.get(name)?.as_dict().ok_or_else(|| format!("`{name}` must be a dict"))?;
                for (k, v) in extension {
                    if !target.contains_key(k) {
                        target.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        match call.name.as_str() {
            "authenticate_travel" => self.authenticate_travel(call),
            "travel_get_login_status" => self.travel_get_login_status(call),
            "get_budget_fiscal_year" => self.get_budget_fiscal_year(call),
            "register_credit_card" => self.register_credit_card(call),
            "get_flight_cost" => self.get_flight_cost(call),
            "get_credit_card_balance" => self.get_credit_card_balance(call),
            "book_flight" => self.book_flight(call),
            "retrieve_invoice" => self.retrieve_invoice(call),
            "get_booking_history" => self.get_booking_history(call),
            "list_all_airports" => self.list_all_airports(call),
            "cancel_booking" => self.cancel_booking(call),
            "compute_exchange_rate" => self.compute_exchange_rate(call),
            "verify_traveler_information" => self.verify_traveler_information(call),
            "set_budget_limit" => self.set_budget_limit(call),
            "get_nearest_airport_by_city" => self.get_nearest_airport_by_city(call),
            "purchase_insurance" => self.purchase_insurance(call),
            "contact_customer_support" => self.contact_customer_support(call),
            "get_all_credit_cards" => self.get_all_credit_cards(call),
            other => Err(format!("'{CLASS}' object has no attribute '{other}'")),
        }
    }

    fn state(&self) -> Dict {
        dict! {
            "credit_card_list" => self.credit_card_list.clone(),
            "booking_record" => self.booking_record.clone(),
            "access_token" => self.access_token.clone(),
            "token_type" => self.token_type.clone(),
            "token_expires_in" => self.token_expires_in.clone(),
            "token_scope" => self.token_scope.clone(),
            "user_first_name" => self.user_first_name.clone(),
            "user_last_name" => self.user_last_name.clone(),
            "budget_limit" => self.budget_limit.clone(),
            "long_context" => self.long_context,
        }
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(self.clone())
    }
}

fn error(msg: &str) -> Value {
    vdict! { "error" => msg }
}

/// The dict key a Python value hashes to (`True` is `1`, `2.0` is `2`); `None` for a
/// hashable value no str- or int-keyed dict can hold; an error for an unhashable one.
fn hash_key(v: &Value) -> Result<Option<Key>, String> {
    Ok(match v {
        Value::Str(s) => Some(Key::Str(s.clone())),
        Value::Int(i) => Some(Key::Int(*i)),
        Value::Bool(b) => Some(Key::Int(i64::from(*b))),
        Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => Some(Key::Int(*x as i64)),
        Value::List(_) | Value::Dict(_) | Value::Set(_) => return Err(format!("unhashable type: '{}'", v.type_name())),
        _ => None,
    })
}

/// `d[key]` if `key in d`.
fn lookup<'a>(d: &'a Dict, key: &Value) -> Result<Option<&'a Value>, String> {
    Ok(hash_key(key)?.and_then(|k| d.get(&k)))
}

/// `key in d`.
fn contains(d: &Dict, key: &Value) -> Result<bool, String> {
    lookup(d, key).map(|v| v.is_some())
}

/// `name in container` for a record that should be a dict.
fn contains_str(container: &Value, name: &str) -> Result<bool, String> {
    match container {
        Value::Dict(d) => Ok(d.contains_key(&Key::from(name))),
        Value::Str(s) => Ok(s.contains(name)),
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            Ok(items.iter().any(|v| v.as_str() == Some(name)))
        }
        other => Err(format!("argument of type '{}' is not iterable", other.type_name())),
    }
}

/// `record[name]`, with Python's `KeyError`/`TypeError` text.
fn get_item<'a>(record: &'a Value, name: &str) -> Result<&'a Value, String> {
    match record {
        Value::Dict(d) => d.get(&Key::from(name)).ok_or_else(|| str_repr(name)),
        other => Err(not_subscriptable(other)),
    }
}

fn not_subscriptable(v: &Value) -> String {
    match v {
        Value::Str(_) => "string indices must be integers, not 'str'".into(),
        Value::List(_) => "list indices must be integers or slices, not str".into(),
        Value::Tuple(_) => "tuple indices must be integers or slices, not str".into(),
        other => format!("'{}' object is not subscriptable", other.type_name()),
    }
}

fn int_of(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

#[derive(Clone, Copy)]
enum Op {
    SubAssign,
    AddAssign,
}

/// Python's `a -= b` or `a += b` on numbers: `int` when both are `int`, else `float`.
fn py_arith(a: &Value, b: &Value, op: Op) -> Result<Value, String> {
    let symbol = match op {
        Op::SubAssign => "-=",
        Op::AddAssign => "+=",
    };
    let unsupported =
        || format!("unsupported operand type(s) for {symbol}: '{}' and '{}'", a.type_name(), b.type_name());
    match (a, b) {
        (Value::Int(_) | Value::Bool(_), Value::Int(_) | Value::Bool(_)) => {
            let (x, y) = (int_of(a), int_of(b));
            let r = match op {
                Op::SubAssign => x.checked_sub(y),
                Op::AddAssign => x.checked_add(y),
            };
            r.map(Value::Int).ok_or_else(|| "integer overflow".into())
        }
        (Value::Str(x), Value::Str(y)) if matches!(op, Op::AddAssign) => Ok(Value::Str(format!("{x}{y}"))),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => Ok(Value::Float(match op {
                Op::SubAssign => x - y,
                Op::AddAssign => x + y,
            })),
            _ => Err(unsupported()),
        },
    }
}

/// Python's `a < b` on numbers (and on two strings).
fn py_lt(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x < y),
        (Value::Int(_) | Value::Bool(_), Value::Int(_) | Value::Bool(_)) => Ok(int_of(a) < int_of(b)),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => Ok(x < y),
            _ => Err(format!("'<' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name())),
        },
    }
}

/// Python's `float(v)`.
fn py_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Str(s) => {
            let t = s.trim();
            t.parse::<f64>()
                .ok()
                .filter(|_| !t.is_empty())
                .ok_or_else(|| format!("could not convert string to float: {}", str_repr(s)))
        }
        other => other
            .as_f64()
            .ok_or_else(|| format!("float() argument must be a string or a real number, not '{}'", other.type_name())),
    }
}

/// `round(x, 2)`.
fn round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.2}").parse().unwrap_or(x)
}

/// The value of a Unicode decimal digit (`int()` and `\d` accept all of them).
fn decimal_value(c: char) -> Option<u32> {
    let cp = c as u32;
    DECIMAL_ZEROS.iter().find(|&&z| (z..z + 10).contains(&cp)).map(|z| cp - z)
}

/// The sum of the digits of a date string, as `sum(int(c) for c in s if c.isdigit())`.
fn digit_sum(date: &Value) -> Result<u32, String> {
    let Some(s) = date.as_str() else {
        return Err(format!("'{}' object is not iterable", date.type_name()));
    };
    let mut sum = 0;
    for c in s.chars() {
        if let Some(d) = decimal_value(c) {
            sum += d;
        } else if NON_DECIMAL_DIGITS.contains(&(c as u32)) {
            return Err(format!("invalid literal for int() with base 10: {}", str_repr(&c.to_string())));
        }
    }
    Ok(sum)
}

/// The argument of `datetime.strptime`, which must be a `str`.
fn strptime_arg(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| format!("strptime() argument 1 must be str, not {}", v.type_name()))
}

/// `datetime.strptime(s, "%Y-%m-%d")` as (year, month, day), or `None` where it raises
/// `ValueError`: four digits, `-`, a month `1`..`12` (one or two digits), `-`, a day
/// (`01`..`31`, `1`..`9` or ` 1`..` 9`), nothing after, and a real calendar date.
fn parse_ymd(s: &str) -> Option<(i64, u32, u32)> {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() < 5 || chars[4] != '-' {
        return None;
    }
    let mut year = 0i64;
    for &c in &chars[..4] {
        year = year * 10 + i64::from(decimal_value(c)?);
    }
    let rest = &chars[5..];
    let ascii = |c: char, lo: char, hi: char| (lo..=hi).contains(&c);
    let digit = |c: char| c as u32 - '0' as u32;
    // The month's alternatives, in the order the pattern tries them, each followed by `-`.
    let month = match rest {
        ['1', c, '-', ..] if ascii(*c, '0', '2') => Some((10 + digit(*c), 3)),
        _ => None,
    }
    .or(match rest {
        ['0', c, '-', ..] if ascii(*c, '1', '9') => Some((digit(*c), 3)),
        _ => None,
    })
    .or(match rest {
        [c, '-', ..] if ascii(*c, '1', '9') => Some((digit(*c), 2)),
        _ => None,
    });
    let (month, used) = month?;
    let rest = &rest[used..];
    // The first day alternative that matches is taken; it must then end the string.
    let (day, used) = match rest {
        ['3', c, ..] if ascii(*c, '0', '1') => (30 + digit(*c), 2),
        [a, c, ..] if ascii(*a, '1', '2') && decimal_value(*c).is_some() => {
            (digit(*a) * 10 + decimal_value(*c).unwrap_or(0), 2)
        }
        ['0', c, ..] if ascii(*c, '1', '9') => (digit(*c), 2),
        [c, ..] if ascii(*c, '1', '9') => (digit(*c), 1),
        [' ', c, ..] if ascii(*c, '1', '9') => (digit(*c), 2),
        _ => return None,
    };
    if rest.len() != used || year < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some((year, month, day))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        _ => 28,
    }
}

/// Today's date in UTC.
fn utc_today() -> (i64, u32, u32) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    civil_from_days(secs.div_euclid(86_400))
}

/// The proleptic Gregorian date `days` days after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;

    /// The result string BFCL makes of one call.
    fn run(env: &mut TravelApi, text: &str) -> String {
        let call = parse_calls(text).unwrap().remove(0);
        match env.call(&call) {
            Ok(v) => v.to_result_string(),
            Err(e) => format!("Error during execution: {e}"),
        }
    }

    fn scenario() -> TravelApi {
        let json = serde_json::json!({
            "access_token": "tok", "token_expires_in": 3, "user_first_name": "Ada", "user_last_name": "Lovelace",
            "budget_limit": null,
            "credit_card_list": {
                "card_a": {"card_number": "4111", "balance": 5000},
                "card_b": {"card_number": "4222", "balance": 150.5},
                "card_nobal": {"card_number": "4333"}
            },
            "booking_record": {
                "bk_1": {"card_id": "card_a", "travel_date": "2024-03-01", "travel_from": "SFO", "travel_to": "LAX",
                         "travel_class": "economy", "travel_cost": 200.0, "transaction_id": "t1"},
                "bk_odd": {"flight_number": "UA1", "cost": null},
                "bk_lost": {"card_id": "card_gone", "travel_cost": 10.0}
            }
        });
        let mut env = TravelApi::default();
        env.load_scenario(Value::from_json(&json).as_dict().unwrap(), None).unwrap();
        env
    }

    #[test]
    fn default_state_is_logged_out() {
        let mut env = TravelApi::default();
        env.load_scenario(&Dict::new(), None).unwrap();
        assert_eq!(run(&mut env, "travel_get_login_status()"), r#"{"status": false}"#);
        assert_eq!(
            run(&mut env, "register_credit_card('x', '1', '12/30', 'A', 123)"),
            r#"{"error": "Token not initialized"}"#
        );
        assert_eq!(run(&mut env, "get_budget_fiscal_year()"), r#"{"budget_fiscal_year": "2018"}"#);
        let keys: Vec<String> = env.state().keys().map(|k| k.as_str().unwrap().to_owned()).collect();
        assert_eq!(
            keys,
            [
                "credit_card_list",
                "booking_record",
                "access_token",
                "token_type",
                "token_expires_in",
                "token_scope",
                "user_first_name",
                "user_last_name",
                "budget_limit",
                "long_context"
            ]
        );
    }

    #[test]
    fn authenticate_and_register_draw_from_the_default_seed() {
        let mut env = TravelApi::default();
        env.load_scenario(&Dict::new(), None).unwrap();
        assert_eq!(
            run(&mut env, "authenticate_travel('c', 's', 'r', 'read_write', 'Ada', 'Lovelace')"),
            r#"{"expires_in": 2, "access_token": "251675", "token_type": "Bearer", "scope": "read_write"}"#
        );
        assert_eq!(run(&mut env, "travel_get_login_status()"), r#"{"status": true}"#);
        assert_eq!(
            run(&mut env, "register_credit_card('251675', '4999', '12/2030', 'Ada Lovelace', 123)"),
            r#"{"card_id": "391310425148"}"#
        );
        assert_eq!(
            run(&mut env, "get_credit_card_balance(access_token='251675', card_id='391310425148')"),
            r#"{"card_balance": 58617}"#
        );
        assert_eq!(
            run(&mut env, "get_credit_card_balance(access_token='251675', card_id='x')"),
            r#"{"error": "Card not registered. Here are a list of card_id's: ['391310425148']"}"#
        );
    }

    #[test]
    fn booking_insurance_and_cancellation() {
        let mut env = scenario();
        assert_eq!(
            run(&mut env, "book_flight('tok', 'card_a', '2024-1-5', 'LAX', 'HND', 'first')"),
            r#"{"booking_id": "3426812", "transaction_id": "45451592", "booking_status": true, "booking_history": {}}"#
        );
        assert_eq!(
            run(&mut env, "retrieve_invoice(access_token='tok', booking_id='3426812')"),
            r#"{"invoice": {"booking_id": "3426812", "travel_date": "2024-1-5", "travel_from": "LAX", "travel_to": "HND", "travel_class": "first", "travel_cost": 4300.0, "transaction_id": "45451592"}}"#
        );
        assert_eq!(
            run(&mut env, "purchase_insurance('tok', 'full', '3426812', 50, 'card_a')"),
            r#"{"insurance_id": "498276044", "insurance_status": true}"#
        );
        assert_eq!(run(&mut env, "cancel_booking('tok', '3426812')"), r#"{"cancel_status": true}"#);
        assert_eq!(
            run(&mut env, "cancel_booking('tok', '3426812')"),
            r#"{"cancel_status": false, "error": "Booking not found"}"#
        );
        assert_eq!(run(&mut env, "get_credit_card_balance('tok', 'card_a')"), r#"{"card_balance": 4950.0}"#);
    }

    #[test]
    fn booking_errors() {
        let mut env = scenario();
        let book = |env: &mut TravelApi, card: &str, date: &str, from: &str, to: &str| {
            run(env, &format!("book_flight('tok', '{card}', '{date}', '{from}', '{to}', 'economy')"))
        };
        assert!(book(&mut env, "nope", "2024-01-05", "SFO", "LAX").contains("Card not registered"));
        assert!(book(&mut env, "card_nobal", "2024-01-05", "SFO", "LAX").contains("Balance not found"));
        assert!(book(&mut env, "card_a", "2024-01-05", "XXX", "LAX").contains("Invalid departure airport code: XXX"));
        assert!(book(&mut env, "card_a", "2023-02-29", "SFO", "LAX").contains("Invalid date format"));
        assert!(book(&mut env, "card_a", "2024-01-05", "CDG", "SFO").contains("No available route"));
        assert!(book(&mut env, "card_b", "2024-01-05", "SFO", "JFK").contains("Insufficient funds"));
        assert_eq!(run(&mut env, "set_budget_limit('tok', 6000)"), r#"{"budget_limit": 6000.0}"#);
        assert!(book(&mut env, "card_a", "2024-01-05", "SFO", "LAX").contains("Balance is less than budget limit"));
        assert_eq!(
            run(&mut env, "purchase_insurance('tok', 'x', 'bk_1', 6000.5, 'card_a')"),
            r#"{"insurance_status": false, "error": "Exceeded budget limit"}"#
        );
    }

    #[test]
    fn expired_and_invalid_tokens() {
        let mut env = scenario();
        env.token_expires_in = Value::Int(0);
        assert_eq!(run(&mut env, "get_booking_history('tok')"), r#"{"error": "Token expired"}"#);
        assert_eq!(
            run(&mut env, "cancel_booking('tok', 'bk_1')"),
            r#"{"cancel_status": false, "error": "Token expired"}"#
        );
        assert_eq!(run(&mut env, "travel_get_login_status()"), r#"{"status": false}"#);
        env.token_expires_in = Value::Int(1);
        assert_eq!(run(&mut env, "retrieve_invoice('bad', 'bk_1')"), r#"{"error": "Invalid access token"}"#);
    }

    #[test]
    fn malformed_records_raise_key_errors() {
        let mut env = scenario();
        assert_eq!(run(&mut env, "retrieve_invoice('tok', 'bk_odd')"), "Error during execution: 'travel_date'");
        assert_eq!(run(&mut env, "cancel_booking('tok', 'bk_lost')"), "Error during execution: 'card_gone'");
        assert_eq!(
            run(&mut env, "purchase_insurance('tok', 'x', 'bk_1', 5, 'card_nobal')"),
            "Error during execution: 'balance'"
        );
    }

    #[test]
    fn flight_costs() {
        let mut env = TravelApi::default();
        let cost = |env: &mut TravelApi, args: &str| run(env, &format!("get_flight_cost({args})"));
        assert_eq!(cost(&mut env, "'SFO', 'LAX', '2024-01-01', 'economy'"), r#"{"travel_cost_list": [400.0]}"#);
        assert_eq!(cost(&mut env, "'SFO', 'LAX', '2024-01-02', 'economy'"), r#"{"travel_cost_list": [200.0]}"#);
        assert_eq!(cost(&mut env, "'JFK', 'PEK', '2024-01-02', 'first'"), r#"{"travel_cost_list": [5000.0]}"#);
        assert_eq!(cost(&mut env, "'LAX', 'SFO', '２０２４-01-01', 'economy'"), r#"{"travel_cost_list": [200.0]}"#);
        assert_eq!(
            cost(&mut env, "'LAX', 'SFO', '2024-0²-01', 'economy'"),
            "Error during execution: invalid literal for int() with base 10: '²'"
        );
        assert_eq!(
            cost(&mut env, "'HND', 'LAX', '2024-01-01', 'economy'"),
            "Error during execution: No available route for the given airports."
        );
        assert_eq!(
            cost(&mut env, "'SFO', 'LAX', '2024-01-01', 'premium'"),
            "Error during execution: Invalid travel class. Options are: economy, business, first."
        );
        env.long_context = true;
        let all = env.flight_cost(&"SFO".into(), &"LAX".into(), &"2024-01-01".into(), &"business".into()).unwrap();
        assert_eq!(all.0.len(), BASE_COSTS.len());
        assert_eq!(all.0[0], Value::Float(800.0));
        assert_eq!(all.1, 800.0);
    }

    #[test]
    fn strptime_dates() {
        assert_eq!(parse_ymd("2024-1-5"), Some((2024, 1, 5)));
        assert_eq!(parse_ymd("2024-01- 5"), Some((2024, 1, 5)));
        assert_eq!(parse_ymd("0001-01-01"), Some((1, 1, 1)));
        assert_eq!(parse_ymd("2024-02-29"), Some((2024, 2, 29)));
        assert_eq!(parse_ymd("２０２４-01-01"), Some((2024, 1, 1)));
        assert_eq!(parse_ymd("2024-10-31"), Some((2024, 10, 31)));
        for bad in [
            "0000-01-01",
            "2023-02-29",
            "2024-02-30",
            "+024-01-01",
            "2024-01-05 ",
            "2024-001-05",
            "2024-1-010",
            "12024-01-01",
            "2024-11-31",
            "2024-0-1",
            "2024-12-00",
            "2024-13-01",
            "",
        ] {
            assert_eq!(parse_ymd(bad), None, "{bad}");
        }
    }

    #[test]
    fn exchange_rates() {
        let mut env = TravelApi::default();
        let ex = |env: &mut TravelApi, args: &str| run(env, &format!("compute_exchange_rate({args})"));
        assert_eq!(ex(&mut env, "'USD', 'RMB', 100"), r#"{"exchanged_value": 700.0}"#);
        assert_eq!(ex(&mut env, "'USD', 'EUR', 3"), r#"{"exchanged_value": 2.4000000000000004}"#);
        assert_eq!(ex(&mut env, "'USD', 'GBP', 1234.56"), r#"{"exchanged_value": 864.1919999999999}"#);
        assert_eq!(ex(&mut env, "'RMB', 'USD', 100"), r#"{"exchanged_value": 14.29}"#);
        assert_eq!(ex(&mut env, "'JPY', 'USD', 12345"), r#"{"exchanged_value": 112.23}"#);
        assert_eq!(ex(&mut env, "'MXN', 'USD', 1.005"), r#"{"exchanged_value": 0.05}"#);
        assert_eq!(
            ex(&mut env, "'USD', 'USD', 1"),
            "Error during execution: No available exchange rate for the given currencies."
        );
    }

    #[test]
    fn traveller_age_counts_from_the_fixed_day() {
        let mut env = scenario();
        env.set_today(2026, 11, 25);
        let verify = |env: &mut TravelApi, dob: &str, passport: &str| {
            run(env, &format!("verify_traveler_information('Ada', 'Lovelace', '{dob}', '{passport}')"))
        };
        assert_eq!(verify(&mut env, "2008-11-25", "US1"), r#"{"verification_status": true}"#);
        assert!(verify(&mut env, "2008-11-26", "US1").contains("at least 18 years old"));
        assert!(verify(&mut env, "01/01/1990", "US1").contains("Invalid date of birth format"));
        assert!(verify(&mut env, "1990-01-01", "GB1").contains("issued by the United States"));
        assert_eq!(
            run(&mut env, "verify_traveler_information('Bob', 'Lovelace', '1990-01-01', 'US1')"),
            r#"{"verification_status": false, "verification_failure": "Cannot book flight information for another user.Expected Ada Lovelace, got Bob Lovelace"}"#
        );
    }

    #[test]
    fn missing_arguments_are_listed_as_python_does() {
        let mut env = scenario();
        assert_eq!(
            run(&mut env, "book_flight(access_token='tok')"),
            "Error during execution: TravelAPI.book_flight() missing 5 required positional arguments: 'card_id', \
             'travel_date', 'travel_from', 'travel_to', and 'travel_class'"
        );
        assert_eq!(
            run(&mut env, "cancel_booking()"),
            "Error during execution: TravelAPI.cancel_booking() missing 2 required positional arguments: \
             'access_token' and 'booking_id'"
        );
    }

    #[test]
    fn long_context_merges_without_overwriting() {
        let lc = LongContext {
            constants: dict! {
                "CREDIT_CARD_EXTENSION" => vdict! { "card_a" => vdict! { "balance" => 1 }, "ext" => vdict! { "balance" => 2.0 } },
                "BOOKING_RECORD_EXTENSION" => vdict! { "bk_ext" => vdict! { "card_id" => "ext" } },
            },
        };
        let mut env = TravelApi::default();
        let scenario = scenario().state();
        let mut config = Dict::new();
        for key in ["credit_card_list", "booking_record", "access_token", "token_expires_in"] {
            config.insert(Key::from(key), scenario[&Key::from(key)].clone());
        }
        env.load_scenario(&config, Some(&lc)).unwrap();
        let state = env.state();
        let cards = state[&Key::from("credit_card_list")].as_dict().unwrap();
        assert_eq!(cards.len(), 4);
        assert_eq!(cards[&Key::from("card_a")], vdict! { "card_number" => "4111", "balance" => 5000 });
        assert_eq!(state[&Key::from("booking_record")].as_dict().unwrap().len(), 4);
        assert_eq!(state[&Key::from("long_context")], Value::Bool(true));
        let booked = run(&mut env, "book_flight('tok', 'card_a', '2024-01-02', 'SFO', 'LAX', 'economy')");
        assert!(booked.contains(r#""booking_history": {"bk_1": "#), "{booked}");
    }

    #[test]
    fn utc_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    }

    #[test]
    fn nearest_airport() {
        let mut env = TravelApi::default();
        assert_eq!(run(&mut env, "get_nearest_airport_by_city('Tokyo')"), r#"{"nearest_airport": "HND"}"#);
        assert_eq!(run(&mut env, "get_nearest_airport_by_city('Atlantis')"), r#"{"nearest_airport": "Unknown"}"#);
    }
}
