//! `VehicleControlAPI`: a car's engine, doors, climate, lights, brakes, cruise control,
//! navigation and tyres, with sensor readings drawn from a seeded `random.Random`.
//!
//! Values that come from the scenario or from a call's arguments are kept as [`Value`]s,
//! so an `int` stays an `int` and a float a float through the arithmetic, as they do in
//! Python, and what the checker compares has the reference's types.
//!
//! Long context: the reference stores the drawn temperature into the shared module-level
//! weather dict and returns that dict. The key is appended once and overwritten before
//! every return, so a per-instance copy with the same insertion gives identical results
//! whatever ran before in the process.

use std::sync::Arc;

use crate::call::Call;
use crate::env::{Bound, Default, Environment, LongContext, Param, bind, opt, req};
use crate::pyrandom::PyRandom;
use crate::value::{Dict, Key, Value};
use crate::{dict, vdict};

const CLASS: &str = "VehicleControlAPI";
const DEFAULT_SEED: i64 = 141_053;
const MAX_FUEL_LEVEL: i64 = 50;
const MIN_FUEL_LEVEL: f64 = 0.0;
const MILE_PER_GALLON: f64 = 20.0;
const DOORS: [&str; 4] = ["driver", "passenger", "rear_left", "rear_right"];

const FUNCTIONS: &[&str] = &[
    "startEngine",
    "fillFuelTank",
    "lockDoors",
    "adjustClimateControl",
    "get_outside_temperature_from_google",
    "get_outside_temperature_from_weather_com",
    "setHeadlights",
    "displayCarStatus",
    "activateParkingBrake",
    "pressBrakePedal",
    "releaseBrakePedal",
    "setCruiseControl",
    "get_current_speed",
    "display_log",
    "estimate_drive_feasibility_by_mileage",
    "liter_to_gallon",
    "gallon_to_liter",
    "estimate_distance",
    "get_zipcode_based_on_city",
    "set_navigation",
    "check_tire_pressure",
    "find_nearest_tire_shop",
];

/// Known city-pair distances in km (either order).
const DISTANCES: &[(&str, &str, f64)] = &[
    ("83214", "74532", 750.0),
    ("56108", "62947", 320.0),
    ("71354", "83462", 450.0),
    ("47329", "52013", 290.0),
    ("69238", "51479", 630.0),
    ("94016", "83214", 980.0),
    ("94016", "94704", 600.0),
    ("94704", "08540", 2550.0),
    ("94016", "08540", 1950.0),
    ("62947", "47329", 1053.0),
    ("94016", "62947", 780.0),
    ("74532", "94016", 880.0),
];

const ZIPCODES: &[(&str, &str)] = &[
    ("Rivermist", "83214"),
    ("Stonebrook", "74532"),
    ("Maplecrest", "56108"),
    ("Silverpine", "62947"),
    ("Shadowridge", "71354"),
    ("Sunset Valley", "83462"),
    ("Oakendale", "47329"),
    ("Willowbend", "52013"),
    ("Crescent Hollow", "69238"),
    ("Autumnville", "51479"),
    ("San Francisco", "94016"),
];

/// The long-context filler this class appends to its results.
#[derive(Debug)]
struct Filler {
    car_metadata: Value,
    parking_brake_instruction: Value,
    intermediary_cities: Value,
}

/// The car. Public fields are the attributes BFCL compares; the `_`-prefixed ones in
/// Python are the private fields here.
#[derive(Debug, Clone)]
pub struct VehicleControlAPI {
    rng: PyRandom,
    fuel_level: Value,
    battery_voltage: Value,
    engine_state: Value,
    remaining_unlocked_doors: i64,
    door_status: Dict,
    ac_temperature: Value,
    fan_speed: Value,
    ac_mode: Value,
    humidity_level: Value,
    head_light_status: Value,
    parking_brake_status: Value,
    parking_brake_force: Value,
    slope_angle: Value,
    brake_pedal_status: Value,
    brake_pedal_force: Value,
    distance_to_next_vehicle: Value,
    cruise_status: Value,
    destination: Value,
    front_left_tire_pressure: Value,
    front_right_tire_pressure: Value,
    rear_left_tire_pressure: Value,
    rear_right_tire_pressure: Value,
    long_context: bool,
    filler: Option<Arc<Filler>>,
    /// The long-context weather dict as this instance last returned it.
    weather: Dict,
}

impl std::default::Default for VehicleControlAPI {
    /// The built-in default state (what `_load_scenario({})` sets).
    fn default() -> Self {
        VehicleControlAPI {
            rng: PyRandom::new(DEFAULT_SEED),
            fuel_level: Value::Float(0.0),
            battery_voltage: Value::Float(12.6),
            engine_state: "stopped".into(),
            remaining_unlocked_doors: 4,
            door_status: DOORS.iter().map(|d| (Key::from(*d), Value::from("unlocked"))).collect(),
            ac_temperature: Value::Float(25.0),
            fan_speed: Value::Int(50),
            ac_mode: "auto".into(),
            humidity_level: Value::Float(50.0),
            head_light_status: "off".into(),
            parking_brake_status: "released".into(),
            parking_brake_force: Value::Float(0.0),
            slope_angle: Value::Float(0.0),
            brake_pedal_status: "released".into(),
            brake_pedal_force: Value::Float(0.0),
            distance_to_next_vehicle: Value::Float(50.0),
            cruise_status: "inactive".into(),
            destination: "None".into(),
            front_left_tire_pressure: Value::Float(32.0),
            front_right_tire_pressure: Value::Float(32.0),
            rear_left_tire_pressure: Value::Float(30.0),
            rear_right_tire_pressure: Value::Float(30.0),
            long_context: false,
            filler: None,
            weather: Dict::new(),
        }
    }
}

/// A fresh `VehicleControlAPI`.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(VehicleControlAPI::default()))
}

// ---- Python semantics for the few operators the class uses ----------------------------

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

/// Python's rich comparison `a <op> b` (`<`, `<=`, `>`, `>=`) on numbers and strings,
/// with Python's `TypeError` message otherwise.
fn py_cmp(a: &Value, op: &str, b: &Value) -> Result<bool, String> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        _ => match (as_int(a), as_int(b)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => {
                    return Err(format!(
                        "'{op}' not supported between instances of '{}' and '{}'",
                        a.type_name(),
                        b.type_name()
                    ));
                }
            },
        },
    };
    Ok(match (ord, op) {
        (None, _) => false, // NaN compares false
        (Some(o), "<") => o == Ordering::Less,
        (Some(o), "<=") => o != Ordering::Greater,
        (Some(o), ">") => o == Ordering::Greater,
        (Some(o), ">=") => o != Ordering::Less,
        _ => unreachable!("comparison operator {op}"),
    })
}

/// Python's `a <op> b` for `+ - * /` on numbers: `int` with `int` stays `int` (except `/`),
/// anything with a `float` is a `float`.
fn py_arith(a: &Value, op: char, b: &Value) -> Result<Value, String> {
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        let r = match op {
            '+' => x.checked_add(y),
            '-' => x.checked_sub(y),
            '*' => x.checked_mul(y),
            '/' => {
                if y == 0 {
                    return Err("division by zero".into());
                }
                return Ok(Value::Float(x as f64 / y as f64));
            }
            _ => unreachable!("operator {op}"),
        };
        return r.map(Value::Int).ok_or_else(|| "integer overflow".to_owned());
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => Ok(Value::Float(match op {
            '+' => x + y,
            '-' => x - y,
            '*' => x * y,
            '/' => {
                if y == 0.0 {
                    return Err("float division by zero".into());
                }
                x / y
            }
            _ => unreachable!("operator {op}"),
        })),
        _ => {
            let is_seq = |v: &Value| matches!(v, Value::Str(_) | Value::List(_) | Value::Tuple(_));
            if op == '*' && (is_seq(a) && matches!(b, Value::Float(_)) || is_seq(b) && matches!(a, Value::Float(_))) {
                let other = if is_seq(a) { b } else { a };
                return Err(format!("can't multiply sequence by non-int of type '{}'", other.type_name()));
            }
            Err(format!("unsupported operand type(s) for {op}: '{}' and '{}'", a.type_name(), b.type_name()))
        }
    }
}

/// Python's `float(v)`.
fn py_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(x) => Ok(*x),
        Value::Int(i) => Ok(*i as f64),
        Value::Bool(b) => Ok(*b as i64 as f64),
        Value::Str(s) => parse_float_str(s).ok_or_else(|| format!("could not convert string to float: {}", v.repr())),
        other => Err(format!("float() argument must be a string or a real number, not '{}'", other.type_name())),
    }
}

/// `float(str)`: surrounding whitespace ignored, `_` allowed between digits,
/// `inf`/`infinity`/`nan` in any case with an optional sign.
fn parse_float_str(s: &str) -> Option<f64> {
    let t = s.trim();
    let bytes = t.as_bytes();
    let mut cleaned = String::with_capacity(t.len());
    for (i, &c) in bytes.iter().enumerate() {
        if c == b'_' {
            let ok = i > 0 && bytes[i - 1].is_ascii_digit() && bytes.get(i + 1).is_some_and(|n| n.is_ascii_digit());
            if !ok {
                return None;
            }
        } else {
            cleaned.push(c as char);
        }
    }
    if !t.is_ascii() {
        return None;
    }
    let body = cleaned.trim_start_matches(['+', '-']);
    let lower = body.to_ascii_lowercase();
    if cleaned.len() - body.len() > 1 {
        return None;
    }
    if lower.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-'))
        || matches!(lower.as_str(), "inf" | "infinity" | "nan")
    {
        cleaned.parse().ok()
    } else {
        None
    }
}

/// `d[key]` on a str-keyed dict: the key, or Python's `KeyError`/`TypeError` message.
fn dict_key(d: &Dict, key: &Value) -> Result<Key, String> {
    let k = match key {
        Value::Str(s) => Key::Str(s.clone()),
        Value::Int(i) => Key::Int(*i),
        Value::Bool(b) => Key::Int(*b as i64),
        Value::List(_) | Value::Dict(_) | Value::Set(_) => {
            return Err(format!("unhashable type: '{}'", key.type_name()));
        }
        other => return Err(other.repr()),
    };
    if d.contains_key(&k) { Ok(k) } else { Err(key.repr()) }
}

/// `for x in v` over a list, tuple, set, string (its characters) or dict (its keys).
fn iterate(v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => Ok(items.clone()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::Str(c.to_string())).collect()),
        Value::Dict(d) => Ok(d.keys().map(Key::to_value).collect()),
        other => Err(format!("'{}' object is not iterable", other.type_name())),
    }
}

fn is(v: &Value, s: &str) -> bool {
    v.as_str() == Some(s)
}

// ---- the class ------------------------------------------------------------------------

const NO_ARGS: &[Param] = &[];
const SIG_START_ENGINE: &[Param] = &[req("ignitionMode")];
const SIG_FILL_FUEL: &[Param] = &[req("fuelAmount")];
const SIG_LOCK_DOORS: &[Param] = &[req("unlock"), req("door")];
const SIG_CLIMATE: &[Param] = &[
    req("temperature"),
    opt("unit", Default::Str("celsius")),
    opt("fanSpeed", Default::Int(50)),
    opt("mode", Default::Str("auto")),
];
const SIG_MODE: &[Param] = &[req("mode")];
const SIG_OPTION: &[Param] = &[req("option")];
const SIG_PEDAL: &[Param] = &[req("pedalPosition")];
const SIG_CRUISE: &[Param] = &[req("speed"), req("activate"), req("distanceToNextVehicle")];
const SIG_LOG: &[Param] = &[req("messages")];
const SIG_DISTANCE: &[Param] = &[req("distance")];
const SIG_LITER: &[Param] = &[req("liter")];
const SIG_GALLON: &[Param] = &[req("gallon")];
const SIG_CITIES: &[Param] = &[req("cityA"), req("cityB")];
const SIG_CITY: &[Param] = &[req("city")];
const SIG_DESTINATION: &[Param] = &[req("destination")];

fn error(msg: &str) -> Value {
    vdict! { "error" => msg }
}

impl VehicleControlAPI {
    fn start_engine(&mut self, a: &Bound) -> Result<Value, String> {
        let mode = a.get("ignitionMode");
        if is(mode, "STOP") {
            self.engine_state = "stopped".into();
        }
        if self.remaining_unlocked_doors > 0 {
            let unlocked: Vec<String> = self
                .door_status
                .iter()
                .filter(|(_, s)| is(s, "unlocked"))
                .map(|(d, _)| d.to_value().py_str())
                .collect();
            return Ok(error(&format!(
                "All doors must be locked before starting the engine. Here are the unlocked doors: {}",
                unlocked.join(", ")
            )));
        }
        if !is(&self.brake_pedal_status, "pressed") {
            return Ok(error("Brake pedal needs to be pressed when starting the engine."));
        }
        if self.brake_pedal_force != Value::Float(1000.0) {
            return Ok(error("Must press the brake fully before starting the engine."));
        }
        if py_cmp(&self.fuel_level, "<", &Value::Float(MIN_FUEL_LEVEL))? {
            return Ok(error("Fuel tank is empty."));
        }
        if !is(mode, "START") {
            return Ok(error("Invalid ignition mode."));
        }
        self.engine_state = "running".into();
        Ok(vdict! {
            "engineState" => self.engine_state.clone(),
            "fuelLevel" => self.fuel_level.clone(),
            "batteryVoltage" => self.battery_voltage.clone(),
        })
    }

    fn fill_fuel_tank(&mut self, a: &Bound) -> Result<Value, String> {
        let amount = a.get("fuelAmount");
        if py_cmp(amount, "<", &Value::Int(0))? {
            return Ok(error("Fuel amount cannot be negative."));
        }
        let total = py_arith(&self.fuel_level, '+', amount)?;
        if py_cmp(&total, ">", &Value::Int(MAX_FUEL_LEVEL))? {
            return Ok(error("Cannot fill gas above the tank capacity."));
        }
        if py_cmp(&total, "<", &Value::Float(MIN_FUEL_LEVEL))? {
            return Ok(error("Fuel tank is empty. Min fuel level is 0 gallons."));
        }
        self.fuel_level = total;
        Ok(vdict! { "fuelLevel" => self.fuel_level.clone() })
    }

    fn lock_doors(&mut self, a: &Bound) -> Result<Value, String> {
        let unlock = a.get("unlock").truthy();
        let to = if unlock { "unlocked" } else { "locked" };
        for d in iterate(a.get("door"))? {
            let key = dict_key(&self.door_status, &d)?;
            let status = self.door_status.get_mut(&key).expect("checked by dict_key");
            if is(status, to) {
                continue;
            }
            *status = to.into();
            self.remaining_unlocked_doors += if unlock { 1 } else { -1 };
        }
        Ok(vdict! { "lockStatus" => to, "remainingUnlockedDoors" => self.remaining_unlocked_doors })
    }

    fn adjust_climate_control(&mut self, a: &Bound) -> Result<Value, String> {
        let temperature = a.get("temperature");
        let fan_speed = a.get("fanSpeed");
        let mode = a.get("mode");
        if !(py_cmp(&Value::Int(0), "<=", fan_speed)? && py_cmp(fan_speed, "<=", &Value::Int(100))?) {
            return Ok(error("Fan speed must be between 0 and 100."));
        }
        self.ac_temperature = temperature.clone();
        if is(a.get("unit"), "fahrenheit") {
            let t = py_arith(temperature, '-', &Value::Int(32))?;
            let t = py_arith(&t, '*', &Value::Int(5))?;
            self.ac_temperature = py_arith(&t, '/', &Value::Int(9))?;
        }
        self.fan_speed = fan_speed.clone();
        self.ac_mode = mode.clone();
        Ok(vdict! {
            "currentACTemperature" => temperature.clone(),
            "climateMode" => mode.clone(),
            "humidityLevel" => self.humidity_level.clone(),
        })
    }

    fn outside_temperature_google(&mut self) -> Value {
        let t = self.rng.uniform(-10.0, 40.0);
        if self.long_context {
            self.weather.insert(Key::from("outsideTemperature"), Value::Float(t));
            return Value::Dict(self.weather.clone());
        }
        vdict! { "outsideTemperature" => t }
    }

    fn set_headlights(&mut self, a: &Bound) -> Value {
        let mode = a.get("mode");
        if !["on", "off", "auto"].iter().any(|m| is(mode, m)) {
            return error("Invalid headlight mode.");
        }
        let status = if is(mode, "on") { "on" } else { "off" };
        self.head_light_status = status.into();
        vdict! { "headlightStatus" => status }
    }

    fn display_car_status(&self, a: &Bound) -> Value {
        let mut status = Dict::new();
        let mut put = |k: &str, v: Value| {
            status.insert(Key::from(k), v);
        };
        if let Some(f) = self.filler.as_ref().filter(|_| self.long_context) {
            put("metadata", f.car_metadata.clone());
        }
        match a.get("option").as_str().unwrap_or_default() {
            "fuel" => put("fuelLevel", self.fuel_level.clone()),
            "battery" => put("batteryVoltage", self.battery_voltage.clone()),
            "doors" => put("doorStatus", Value::Dict(self.door_status.clone())),
            "climate" => {
                put("currentACTemperature", self.ac_temperature.clone());
                put("fanSpeed", self.fan_speed.clone());
                put("climateMode", self.ac_mode.clone());
                put("humidityLevel", self.humidity_level.clone());
            }
            "headlights" => put("headlightStatus", self.head_light_status.clone()),
            "parkingBrake" => {
                put("parkingBrakeStatus", self.parking_brake_status.clone());
                put("parkingBrakeForce", self.parking_brake_force.clone());
                put("slopeAngle", self.slope_angle.clone());
            }
            "brakePedal" => {
                put("brakePedalStatus", self.brake_pedal_status.clone());
                put("brakePedalForce", self.brake_pedal_force.clone());
            }
            "engine" => put("engineState", self.engine_state.clone()),
            _ => put("error", "Invalid option".into()),
        }
        Value::Dict(status)
    }

    fn activate_parking_brake(&mut self, a: &Bound) -> Value {
        let mode = a.get("mode");
        let (status, force) = if is(mode, "engage") {
            ("engaged", 500.0)
        } else if is(mode, "release") {
            ("released", 0.0)
        } else {
            return error("Invalid mode");
        };
        self.parking_brake_status = status.into();
        self.parking_brake_force = Value::Float(force);
        self.slope_angle = Value::Float(10.0);
        let mut out = Dict::new();
        if let Some(f) = self.filler.as_ref().filter(|_| self.long_context) {
            out.insert(Key::from("parkingBrakeInstruction"), f.parking_brake_instruction.clone());
        }
        out.extend(dict! { "parkingBrakeStatus" => status, "_parkingBrakeForce" => force, "_slopeAngle" => 10.0 });
        Value::Dict(out)
    }

    fn press_brake_pedal(&mut self, a: &Bound) -> Result<Value, String> {
        let position = a.get("pedalPosition");
        if !(py_cmp(&Value::Int(0), "<=", position)? && py_cmp(position, "<=", &Value::Int(1))?) {
            return Ok(error("Pedal position must be between 0 and 1."));
        }
        if *position == Value::Int(0) {
            return Ok(self.release_brake_pedal());
        }
        let force = py_arith(position, '*', &Value::Int(1000))?;
        self.brake_pedal_status = "pressed".into();
        self.brake_pedal_force = force.clone();
        Ok(vdict! { "brakePedalStatus" => "pressed", "brakePedalForce" => py_float(&force)? })
    }

    fn release_brake_pedal(&mut self) -> Value {
        self.brake_pedal_status = "released".into();
        self.brake_pedal_force = Value::Float(0.0);
        vdict! { "brakePedalStatus" => "released", "brakePedalForce" => 0.0 }
    }

    fn set_cruise_control(&mut self, a: &Bound) -> Result<Value, String> {
        let distance = py_float(a.get("distanceToNextVehicle"))?;
        let speed = py_float(a.get("speed"))?;
        if is(&self.engine_state, "stopped") {
            return Ok(error("Start the engine before activating the cruise control."));
        }
        let status = if a.get("activate").truthy() {
            self.distance_to_next_vehicle = Value::Float(distance);
            if !(0.0..=120.0).contains(&speed) || speed % 5.0 != 0.0 {
                return Ok(error("Invalid speed"));
            }
            "active"
        } else {
            self.distance_to_next_vehicle = Value::Float(distance);
            "inactive"
        };
        self.cruise_status = status.into();
        Ok(vdict! { "cruiseStatus" => status, "currentSpeed" => speed, "distanceToNextVehicle" => distance })
    }

    fn estimate_drive_feasibility(&self, a: &Bound) -> Result<Value, String> {
        let range = py_arith(&self.fuel_level, '*', &Value::Float(MILE_PER_GALLON))?;
        let can_drive = !py_cmp(&range, "<", a.get("distance"))?;
        Ok(vdict! { "canDrive" => can_drive })
    }

    fn estimate_distance(&self, a: &Bound) -> Value {
        let (city_a, city_b) = (a.get("cityA"), a.get("cityB"));
        let found =
            DISTANCES.iter().find(|(x, y, _)| (is(city_a, x) && is(city_b, y)) || (is(city_a, y) && is(city_b, x)));
        let mut out = match found {
            Some((_, _, km)) => dict! { "distance" => *km },
            None => dict! { "error" => "distance not found in database." },
        };
        if let Some(f) = self.filler.as_ref().filter(|_| self.long_context) {
            out.insert(Key::from("intermediaryCities"), f.intermediary_cities.clone());
        }
        Value::Dict(out)
    }

    fn set_navigation(&mut self, a: &Bound) -> Result<Value, String> {
        let destination = a.get("destination");
        self.destination = destination.clone();
        match destination {
            Value::Str(d) => Ok(vdict! { "status" => format!("Navigating to {d}") }),
            other => Err(format!("can only concatenate str (not \"{}\") to str", other.type_name())),
        }
    }

    fn check_tire_pressure(&self) -> Result<Value, String> {
        let mut sum = py_arith(&self.front_left_tire_pressure, '+', &self.front_right_tire_pressure)?;
        sum = py_arith(&sum, '+', &self.rear_left_tire_pressure)?;
        sum = py_arith(&sum, '+', &self.rear_right_tire_pressure)?;
        let mean = py_arith(&sum, '/', &Value::Int(4))?;
        let healthy = py_cmp(&Value::Int(30), "<=", &mean)? && py_cmp(&mean, "<=", &Value::Int(35))?;
        let car_info = match self.filler.as_ref().filter(|_| self.long_context) {
            Some(f) => f.car_metadata.clone(),
            None => Value::Dict(Dict::new()),
        };
        Ok(vdict! {
            "frontLeftTirePressure" => self.front_left_tire_pressure.clone(),
            "frontRightTirePressure" => self.front_right_tire_pressure.clone(),
            "rearLeftTirePressure" => self.rear_left_tire_pressure.clone(),
            "rearRightTirePressure" => self.rear_right_tire_pressure.clone(),
            "healthy_tire_pressure" => healthy,
            "car_info" => car_info,
        })
    }
}

impl Environment for VehicleControlAPI {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, long_context: Option<&LongContext>) -> Result<(), String> {
        let mut s = VehicleControlAPI::default();
        let get = |key: &str| scenario.get(&Key::from(key)).cloned();
        if let Some(seed) = get("random_seed") {
            let seed = as_int(&seed).ok_or_else(|| format!("random_seed must be an int, got {}", seed.repr()))?;
            s.rng = PyRandom::new(seed);
        }
        let set = |field: &mut Value, key: &str| {
            if let Some(v) = get(key) {
                *field = v;
            }
        };
        set(&mut s.fuel_level, "fuelLevel");
        set(&mut s.battery_voltage, "batteryVoltage");
        set(&mut s.engine_state, "engineState");
        if let Some(doors) = get("doorStatus") {
            match doors {
                Value::Dict(d) => s.door_status = d,
                other => return Err(format!("'{}' object has no attribute 'keys'", other.type_name())),
            }
        }
        let locked = s.door_status.values().filter(|v| is(v, "locked")).count() as i64;
        s.remaining_unlocked_doors = 4 - locked;
        set(&mut s.ac_temperature, "acTemperature");
        set(&mut s.fan_speed, "fanSpeed");
        set(&mut s.ac_mode, "acMode");
        set(&mut s.humidity_level, "humidityLevel");
        set(&mut s.head_light_status, "headLightStatus");
        set(&mut s.parking_brake_status, "parkingBrakeStatus");
        set(&mut s.parking_brake_force, "parkingBrakeForce");
        set(&mut s.slope_angle, "slopeAngle");
        set(&mut s.brake_pedal_status, "brakePedalStatus");
        set(&mut s.brake_pedal_force, "brakePedalForce");
        set(&mut s.distance_to_next_vehicle, "distanceToNextVehicle");
        set(&mut s.cruise_status, "cruiseStatus");
        set(&mut s.destination, "destination");
        set(&mut s.front_left_tire_pressure, "frontLeftTirePressure");
        set(&mut s.front_right_tire_pressure, "frontRightTirePressure");
        set(&mut s.rear_left_tire_pressure, "rearLeftTirePressure");
        set(&mut s.rear_right_tire_pressure, "rearRightTirePressure");
        if let Some(lc) = long_context {
            let weather = match lc.get("LONG_WEATHER_EXTENSION")? {
                Value::Dict(d) => d.clone(),
                other => return Err(format!("LONG_WEATHER_EXTENSION must be a dict, got {}", other.type_name())),
            };
            s.weather = weather;
            s.filler = Some(Arc::new(Filler {
                car_metadata: lc.get("CAR_STATUS_METADATA_EXTENSION")?.clone(),
                parking_brake_instruction: lc.get("PARKING_BRAKE_INSTRUCTION")?.clone(),
                intermediary_cities: lc.get("INTERMEDIARY_CITIES")?.clone(),
            }));
            s.long_context = true;
        }
        *self = s;
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        let args = |sig: &[Param]| bind(CLASS, call, sig);
        match call.name.as_str() {
            "startEngine" => self.start_engine(&args(SIG_START_ENGINE)?),
            "fillFuelTank" => self.fill_fuel_tank(&args(SIG_FILL_FUEL)?),
            "lockDoors" => self.lock_doors(&args(SIG_LOCK_DOORS)?),
            "adjustClimateControl" => self.adjust_climate_control(&args(SIG_CLIMATE)?),
            "get_outside_temperature_from_google" => {
                args(NO_ARGS)?;
                Ok(self.outside_temperature_google())
            }
            "get_outside_temperature_from_weather_com" => {
                args(NO_ARGS)?;
                Ok(vdict! { "error" => 404 })
            }
            "setHeadlights" => Ok(self.set_headlights(&args(SIG_MODE)?)),
            "displayCarStatus" => Ok(self.display_car_status(&args(SIG_OPTION)?)),
            "activateParkingBrake" => Ok(self.activate_parking_brake(&args(SIG_MODE)?)),
            "pressBrakePedal" => self.press_brake_pedal(&args(SIG_PEDAL)?),
            "releaseBrakePedal" => {
                args(NO_ARGS)?;
                Ok(self.release_brake_pedal())
            }
            "setCruiseControl" => self.set_cruise_control(&args(SIG_CRUISE)?),
            "get_current_speed" => {
                args(NO_ARGS)?;
                Ok(vdict! { "currentSpeed" => self.rng.uniform(0.0, 120.0) })
            }
            "display_log" => Ok(vdict! { "log" => args(SIG_LOG)?.get("messages").clone() }),
            "estimate_drive_feasibility_by_mileage" => self.estimate_drive_feasibility(&args(SIG_DISTANCE)?),
            "liter_to_gallon" => {
                let a = args(SIG_LITER)?;
                Ok(vdict! { "gallon" => py_arith(a.get("liter"), '*', &Value::Float(0.264172))? })
            }
            "gallon_to_liter" => {
                let a = args(SIG_GALLON)?;
                Ok(vdict! { "liter" => py_arith(a.get("gallon"), '*', &Value::Float(3.78541))? })
            }
            "estimate_distance" => Ok(self.estimate_distance(&args(SIG_CITIES)?)),
            "get_zipcode_based_on_city" => {
                let a = args(SIG_CITY)?;
                let city = a.get("city");
                let zip = ZIPCODES.iter().find(|(c, _)| is(city, c)).map_or("00000", |(_, z)| z);
                Ok(vdict! { "zipcode" => zip })
            }
            "set_navigation" => self.set_navigation(&args(SIG_DESTINATION)?),
            "check_tire_pressure" => {
                args(NO_ARGS)?;
                self.check_tire_pressure()
            }
            "find_nearest_tire_shop" => {
                args(NO_ARGS)?;
                Ok(vdict! { "shopLocation" => "456 Oakwood Avenue, Rivermist, 83214" })
            }
            other => Err(format!("'{CLASS}' object has no attribute '{other}'")),
        }
    }

    fn state(&self) -> Dict {
        dict! {
            "fuelLevel" => self.fuel_level.clone(),
            "batteryVoltage" => self.battery_voltage.clone(),
            "engine_state" => self.engine_state.clone(),
            "remainingUnlockedDoors" => self.remaining_unlocked_doors,
            "doorStatus" => Value::Dict(self.door_status.clone()),
            "acTemperature" => self.ac_temperature.clone(),
            "fanSpeed" => self.fan_speed.clone(),
            "acMode" => self.ac_mode.clone(),
            "humidityLevel" => self.humidity_level.clone(),
            "headLightStatus" => self.head_light_status.clone(),
            "parkingBrakeStatus" => self.parking_brake_status.clone(),
            "brakePedalStatus" => self.brake_pedal_status.clone(),
            "distanceToNextVehicle" => self.distance_to_next_vehicle.clone(),
            "cruiseStatus" => self.cruise_status.clone(),
            "destination" => self.destination.clone(),
            "frontLeftTirePressure" => self.front_left_tire_pressure.clone(),
            "frontRightTirePressure" => self.front_right_tire_pressure.clone(),
            "rearLeftTirePressure" => self.rear_left_tire_pressure.clone(),
            "rearRightTirePressure" => self.rear_right_tire_pressure.clone(),
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

    fn car(config: serde_json::Value) -> VehicleControlAPI {
        let mut v = VehicleControlAPI::default();
        let Value::Dict(d) = Value::from_json(&config) else { panic!("config must be an object") };
        v.load_scenario(&d, None).unwrap();
        v
    }

    fn run(v: &mut VehicleControlAPI, text: &str) -> String {
        match v.call(&parse_calls(text).unwrap()[0]) {
            Ok(value) => value.to_result_string(),
            Err(e) => format!("Error during execution: {e}"),
        }
    }

    fn state(v: &VehicleControlAPI, attr: &str) -> Value {
        v.state().get(&Key::from(attr)).cloned().unwrap()
    }

    fn ready() -> VehicleControlAPI {
        car(serde_json::json!({
            "fuelLevel": 10.0, "engineState": "stopped", "brakePedalStatus": "pressed", "brakePedalForce": 1000.0,
            "doorStatus": {"driver": "locked", "passenger": "locked", "rear_left": "locked", "rear_right": "locked"}
        }))
    }

    #[test]
    fn default_state_and_functions() {
        let v = car(serde_json::json!({}));
        let s = v.state();
        assert_eq!(s.len(), 20);
        assert_eq!(s[&Key::from("destination")], Value::from("None"));
        assert_eq!(s[&Key::from("remainingUnlockedDoors")], Value::Int(4));
        assert!(matches!(s[&Key::from("fuelLevel")], Value::Float(_)));
        assert_eq!(v.functions().len(), 22);
    }

    #[test]
    fn start_engine_checks_in_order() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(
            run(&mut v, "startEngine(ignitionMode='START')"),
            r#"{"error": "All doors must be locked before starting the engine. Here are the unlocked doors: driver, passenger, rear_left, rear_right"}"#
        );
        run(&mut v, "lockDoors(unlock=False, door=['driver','passenger','rear_left','rear_right'])");
        assert_eq!(
            run(&mut v, "startEngine(ignitionMode='START')"),
            r#"{"error": "Brake pedal needs to be pressed when starting the engine."}"#
        );
        run(&mut v, "pressBrakePedal(pedalPosition=0.5)");
        assert_eq!(
            run(&mut v, "startEngine(ignitionMode='START')"),
            r#"{"error": "Must press the brake fully before starting the engine."}"#
        );
        run(&mut v, "pressBrakePedal(pedalPosition=1)");
        assert_eq!(
            run(&mut v, "startEngine(ignitionMode='START')"),
            r#"{"engineState": "running", "fuelLevel": 0.0, "batteryVoltage": 12.6}"#
        );
    }

    #[test]
    fn stop_sets_stopped_then_reports_invalid_mode() {
        let mut v = ready();
        v.engine_state = "running".into();
        assert_eq!(run(&mut v, "startEngine(ignitionMode='STOP')"), r#"{"error": "Invalid ignition mode."}"#);
        assert_eq!(state(&v, "engine_state"), Value::from("stopped"));
        let mut v = ready();
        v.fuel_level = Value::Float(-1.0);
        assert_eq!(run(&mut v, "startEngine(ignitionMode='START')"), r#"{"error": "Fuel tank is empty."}"#);
    }

    #[test]
    fn fuel_keeps_python_types() {
        let mut v = car(serde_json::json!({"fuelLevel": 10}));
        assert_eq!(run(&mut v, "fillFuelTank(fuelAmount=5)"), r#"{"fuelLevel": 15}"#);
        assert_eq!(run(&mut v, "fillFuelTank(fuelAmount=2.5)"), r#"{"fuelLevel": 17.5}"#);
        assert_eq!(run(&mut v, "fillFuelTank(fuelAmount=-1)"), r#"{"error": "Fuel amount cannot be negative."}"#);
        assert_eq!(
            run(&mut v, "fillFuelTank(fuelAmount=40)"),
            r#"{"error": "Cannot fill gas above the tank capacity."}"#
        );
        assert_eq!(
            run(&mut v, "fillFuelTank(fuelAmount='x')"),
            "Error during execution: '<' not supported between instances of 'str' and 'int'"
        );
        assert_eq!(run(&mut v, "estimate_drive_feasibility_by_mileage(distance=350)"), r#"{"canDrive": true}"#);
        assert_eq!(run(&mut v, "estimate_drive_feasibility_by_mileage(distance=351)"), r#"{"canDrive": false}"#);
    }

    #[test]
    fn doors_update_until_a_missing_one() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(
            run(&mut v, "lockDoors(unlock=False, door=['driver','trunk','passenger'])"),
            "Error during execution: 'trunk'"
        );
        assert_eq!(state(&v, "remainingUnlockedDoors"), Value::Int(3));
        assert_eq!(run(&mut v, "lockDoors(unlock=False, door='driver')"), "Error during execution: 'd'");
        assert_eq!(
            run(&mut v, "lockDoors(unlock=True, door=['driver','driver'])"),
            r#"{"lockStatus": "unlocked", "remainingUnlockedDoors": 4}"#
        );
        let v = car(serde_json::json!({"doorStatus": {"driver": "locked", "passenger": "unlocked",
            "rear_left": "locked", "rear_right": "unlocked"}, "remainingUnlockedDoors": 0}));
        assert_eq!(state(&v, "remainingUnlockedDoors"), Value::Int(2));
    }

    #[test]
    fn climate_converts_fahrenheit_and_returns_the_input() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(
            run(&mut v, "adjustClimateControl(temperature=70, unit='fahrenheit')"),
            r#"{"currentACTemperature": 70, "climateMode": "auto", "humidityLevel": 50.0}"#
        );
        assert_eq!(state(&v, "acTemperature"), Value::Float((70.0 - 32.0) * 5.0 / 9.0));
        assert_eq!(
            run(&mut v, "adjustClimateControl(temperature=20, fanSpeed=101)"),
            r#"{"error": "Fan speed must be between 0 and 100."}"#
        );
        assert_eq!(
            run(&mut v, "adjustClimateControl(temperature='hot', unit='fahrenheit', fanSpeed=10)"),
            "Error during execution: unsupported operand type(s) for -: 'str' and 'int'"
        );
        assert_eq!(state(&v, "acTemperature"), Value::from("hot"));
        assert_eq!(
            run(&mut v, "adjustClimateControl(20, 'celsius', 50, 'auto', 1)"),
            "Error during execution: VehicleControlAPI.adjustClimateControl() takes from 2 to 5 positional arguments but 6 were given"
        );
    }

    #[test]
    fn random_readings_follow_cpython() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(
            run(&mut v, "get_outside_temperature_from_google()"),
            r#"{"outsideTemperature": 36.63485703790535}"#
        );
        assert_eq!(run(&mut v, "get_current_speed()"), r#"{"currentSpeed": 99.11925428879405}"#);
        assert_eq!(
            run(&mut v, "get_outside_temperature_from_google()"),
            r#"{"outsideTemperature": 8.546173419897784}"#
        );
        let mut v = car(serde_json::json!({"random_seed": 12345}));
        assert_eq!(run(&mut v, "get_current_speed()"), r#"{"currentSpeed": 49.994384705440936}"#);
        assert_eq!(run(&mut v, "get_outside_temperature_from_weather_com()"), r#"{"error": 404}"#);
    }

    #[test]
    fn lights_brakes_and_status() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(run(&mut v, "setHeadlights(mode='auto')"), r#"{"headlightStatus": "off"}"#);
        assert_eq!(run(&mut v, "setHeadlights(mode='bright')"), r#"{"error": "Invalid headlight mode."}"#);
        assert_eq!(
            run(&mut v, "activateParkingBrake(mode='engage')"),
            r#"{"parkingBrakeStatus": "engaged", "_parkingBrakeForce": 500.0, "_slopeAngle": 10.0}"#
        );
        assert_eq!(
            run(&mut v, "displayCarStatus(option='parkingBrake')"),
            r#"{"parkingBrakeStatus": "engaged", "parkingBrakeForce": 500.0, "slopeAngle": 10.0}"#
        );
        assert_eq!(run(&mut v, "activateParkingBrake(mode='hold')"), r#"{"error": "Invalid mode"}"#);
        assert_eq!(
            run(&mut v, "pressBrakePedal(pedalPosition=1.5)"),
            r#"{"error": "Pedal position must be between 0 and 1."}"#
        );
        assert_eq!(
            run(&mut v, "pressBrakePedal(pedalPosition=0.3)"),
            r#"{"brakePedalStatus": "pressed", "brakePedalForce": 300.0}"#
        );
        assert_eq!(
            run(&mut v, "pressBrakePedal(pedalPosition=0)"),
            r#"{"brakePedalStatus": "released", "brakePedalForce": 0.0}"#
        );
        assert_eq!(run(&mut v, "displayCarStatus(option='tires')"), r#"{"error": "Invalid option"}"#);
    }

    #[test]
    fn cruise_control() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(
            run(&mut v, "setCruiseControl(speed=60, activate=True, distanceToNextVehicle=100)"),
            r#"{"error": "Start the engine before activating the cruise control."}"#
        );
        v.engine_state = "running".into();
        assert_eq!(
            run(&mut v, "setCruiseControl(speed=65, activate=True, distanceToNextVehicle=100)"),
            r#"{"cruiseStatus": "active", "currentSpeed": 65.0, "distanceToNextVehicle": 100.0}"#
        );
        assert_eq!(
            run(&mut v, "setCruiseControl(speed=63, activate=True, distanceToNextVehicle=90.5)"),
            r#"{"error": "Invalid speed"}"#
        );
        assert_eq!(state(&v, "distanceToNextVehicle"), Value::Float(90.5));
        assert_eq!(
            run(&mut v, "setCruiseControl(speed='60', activate=1, distanceToNextVehicle='45.5')"),
            r#"{"cruiseStatus": "active", "currentSpeed": 60.0, "distanceToNextVehicle": 45.5}"#
        );
        assert_eq!(
            run(&mut v, "setCruiseControl(speed='fast', activate=True, distanceToNextVehicle=100)"),
            "Error during execution: could not convert string to float: 'fast'"
        );
    }

    #[test]
    fn conversions_distances_and_navigation() {
        let mut v = car(serde_json::json!({}));
        assert_eq!(run(&mut v, "liter_to_gallon(liter=10)"), r#"{"gallon": 2.6417200000000003}"#);
        assert_eq!(run(&mut v, "gallon_to_liter(gallon=3)"), r#"{"liter": 11.35623}"#);
        assert_eq!(
            run(&mut v, "liter_to_gallon(liter='x')"),
            "Error during execution: can't multiply sequence by non-int of type 'float'"
        );
        assert_eq!(run(&mut v, "estimate_distance(cityA='74532', cityB='83214')"), r#"{"distance": 750.0}"#);
        assert_eq!(
            run(&mut v, "estimate_distance(cityA=83214, cityB=74532)"),
            r#"{"error": "distance not found in database."}"#
        );
        assert_eq!(run(&mut v, "get_zipcode_based_on_city(city='Atlantis')"), r#"{"zipcode": "00000"}"#);
        assert_eq!(
            run(&mut v, "set_navigation(destination=5)"),
            "Error during execution: can only concatenate str (not \"int\") to str"
        );
        assert_eq!(state(&v, "destination"), Value::Int(5));
        assert_eq!(run(&mut v, "display_log(messages=['a', 'b'])"), r#"{"log": ["a", "b"]}"#);
    }

    #[test]
    fn tire_pressure() {
        let mut v = car(serde_json::json!({"frontLeftTirePressure": 28, "frontRightTirePressure": 28,
            "rearLeftTirePressure": 29, "rearRightTirePressure": 30}));
        assert_eq!(
            run(&mut v, "check_tire_pressure()"),
            r#"{"frontLeftTirePressure": 28, "frontRightTirePressure": 28, "rearLeftTirePressure": 29, "rearRightTirePressure": 30, "healthy_tire_pressure": false, "car_info": {}}"#
        );
        assert_eq!(
            run(&mut v, "find_nearest_tire_shop()"),
            r#"{"shopLocation": "456 Oakwood Avenue, Rivermist, 83214"}"#
        );
    }

    #[test]
    fn long_context_filler() {
        let lc = LongContext {
            constants: dict! {
                "CAR_STATUS_METADATA_EXTENSION" => "meta",
                "LONG_WEATHER_EXTENSION" => dict! { "-1_day" => dict! { "uvIndex" => 6 } },
                "PARKING_BRAKE_INSTRUCTION" => "how to",
                "INTERMEDIARY_CITIES" => vec!["A", "B"],
            },
        };
        let mut v = VehicleControlAPI::default();
        v.load_scenario(&Dict::new(), Some(&lc)).unwrap();
        assert_eq!(state(&v, "long_context"), Value::Bool(true));
        assert_eq!(run(&mut v, "displayCarStatus(option='fuel')"), r#"{"metadata": "meta", "fuelLevel": 0.0}"#);
        assert_eq!(
            run(&mut v, "get_outside_temperature_from_google()"),
            r#"{"-1_day": {"uvIndex": 6}, "outsideTemperature": 36.63485703790535}"#
        );
        assert_eq!(
            run(&mut v, "get_outside_temperature_from_google()"),
            r#"{"-1_day": {"uvIndex": 6}, "outsideTemperature": 31.29968928699752}"#
        );
        assert_eq!(
            run(&mut v, "activateParkingBrake(mode='release')"),
            r#"{"parkingBrakeInstruction": "how to", "parkingBrakeStatus": "released", "_parkingBrakeForce": 0.0, "_slopeAngle": 10.0}"#
        );
        assert_eq!(
            run(&mut v, "estimate_distance(cityA='1', cityB='2')"),
            r#"{"error": "distance not found in database.", "intermediaryCities": ["A", "B"]}"#
        );
        assert!(run(&mut v, "check_tire_pressure()").ends_with(r#""car_info": "meta"}"#));
    }

    #[test]
    fn float_strings_parse_like_python() {
        assert_eq!(parse_float_str(" 1_000.5 "), Some(1000.5));
        assert_eq!(parse_float_str("-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float_str("1__0"), None);
        assert_eq!(parse_float_str("_1"), None);
        assert_eq!(parse_float_str("--1"), None);
        assert_eq!(parse_float_str("0x10"), None);
    }
}
