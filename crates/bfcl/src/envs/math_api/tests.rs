//! Expected results recorded from BFCL's Python `MathAPI` (CPython 3.11, mpmath 1.3.0).

use super::*;
use crate::call::parse_calls;

fn run(text: &str) -> String {
    let call = parse_calls(text).unwrap().remove(0);
    match MathApi.call(&call) {
        Ok(v) => v.to_result_string(),
        Err(e) => format!("Error during execution: {e}"),
    }
}

fn check(cases: &[(&str, &str)]) {
    for (call, want) in cases {
        assert_eq!(run(call), *want, "{call}");
    }
}

#[test]
fn logarithm() {
    check(&[
        ("logarithm(value=36.0,base=6.0,precision=4)", "{'result': mpf('2.0')}"),
        ("logarithm(value=20,base=10,precision=2)", "{'result': mpf('1.3027')}"),
        ("logarithm(value=630.0, base=10, precision=5)", "{'result': mpf('2.7993393')}"),
        ("logarithm(value=980.0, base=20, precision=10)", "{'result': mpf('2.299121531134')}"),
        ("logarithm(value=3287.0,base=6.0,precision=4)", "{'result': mpf('4.51947')}"),
        ("logarithm(1000, 10, 15)", "{'result': mpf('2.9999999999999996')}"),
        ("logarithm(1000, 10, 30)", "{'result': mpf('3.0')}"),
        ("logarithm(2, 10, 50)", "{'result': mpf('0.30102999566398119521373889472449302676818988146210811')}"),
        ("logarithm(8, 2, 10)", "{'result': mpf('3.000000000029')}"),
        ("logarithm(1024, 2, 3)", "{'result': mpf('10.0')}"),
        ("logarithm(0.125, 2, 6)", "{'result': mpf('-3.0')}"),
        ("logarithm(1e-300, 10, 20)", "{'result': mpf('-299.99999999999999998916')}"),
        ("logarithm(12345, 1.0000001, 8)", "{'result': mpf('94210068.625')}"),
        ("logarithm(100, 2.718281828459045, 12)", "{'result': mpf('4.60517018598784')}"),
        ("logarithm(7, 3, 0)", "{'result': mpf('2.0')}"),
        ("logarithm(7, 3, -5)", "{'result': mpf('2.0')}"),
        ("logarithm(8, 2, 2.5)", "{'result': mpf('2.9961')}"),
        ("logarithm(1, 10, 5)", "{'result': mpf('0.0')}"),
        ("logarithm(1, 1, 5)", "{\"error\": \"\"}"),
        ("logarithm(10, 1, 5)", "{\"error\": \"\"}"),
        ("logarithm(0, 10, 5)", "{'result': mpf('-inf')}"),
        ("logarithm(10, 0, 5)", "{'result': mpf('0.0')}"),
        ("logarithm(0, 1, 5)", "{\"error\": \"\"}"),
        ("logarithm(-8, 2, 5)", "{'result': mpc(real='3.0', imag='4.5323639')}"),
        ("logarithm(8, -2, 5)", "{'result': mpc(real='0.13926077', imag='-0.63118076')}"),
        ("logarithm(-8, -2, 5)", "{'result': mpc(real='1.0928402', imag='-0.42078733')}"),
        ("logarithm(-1, -1, 6)", "{'result': mpc(real='1.0', imag='0.0')}"),
        ("logarithm(0, -2, 6)", "{'result': mpc(real='-inf', imag='+inf')}"),
        ("logarithm(1, -2, 6)", "{'result': mpc(real='0.0', imag='0.0')}"),
        ("logarithm(-5, 0, 6)", "{'result': mpc(real='0.0', imag='0.0')}"),
        ("logarithm(8, 2, 'x')", "{\"error\": \"invalid literal for int() with base 10: 'x'\"}"),
        (
            "logarithm(8, 2, None)",
            "{\"error\": \"int() argument must be a string, a bytes-like object or a real number, not 'NoneType'\"}",
        ),
        ("logarithm(1.0000000000000002, 10, 5)", "{'result': mpf('9.6432689e-17')}"),
        (
            "logarithm(0.9999999999999999, 2, 40)",
            "{'result': mpf('-1.601713251907458931905900186148761459974511e-16')}",
        ),
        ("logarithm(9007199254740993, 3, 25)", "{'result': mpf('33.43927693928724426733179158')}"),
        (
            "logarithm(123.456, 7.89, 100)",
            "{'result': mpf('2.331474549169235161811213688588558895280556959424787355602270076588584110657061518393423154738565097466')}",
        ),
    ]);
}

#[test]
fn mean() {
    check(&[
        ("mean(numbers=[3,16,60])", "{\"result\": 26.333333333333332}"),
        ("mean([37])", "{\"result\": 37.0}"),
        ("mean([227.16,2.552,227.11, 227.09])", "{\"result\": 170.978}"),
        ("mean([])", "{\"error\": \"Cannot calculate mean of an empty list\"}"),
        ("mean(['a'])", "{\"error\": \"All elements in the list must be numbers\"}"),
        ("mean([True, 2])", "{\"result\": 1.5}"),
        ("mean([9007199254740993, 9007199254740993, 1])", "{\"result\": 6004799503160662.0}"),
        ("mean(5)", "{\"error\": \"All elements in the list must be numbers\"}"),
    ]);
}

#[test]
fn standard_deviation() {
    check(&[
        ("standard_deviation(numbers=[100, 95, 85, 90, 88, 92])", "{\"result\": 4.85340659285368}"),
        ("standard_deviation([1,2,3,4])", "{\"result\": 1.118033988749895}"),
        ("standard_deviation([2.5])", "{\"result\": 0.0}"),
        ("standard_deviation([])", "{\"error\": \"Cannot calculate standard deviation of an empty list\"}"),
        ("standard_deviation([1, 'a'])", "{\"error\": \"All elements in the list must be numbers\"}"),
    ]);
}

#[test]
fn si_unit_conversion() {
    check(&[
        ("si_unit_conversion(5, 'km', 'm')", "{\"result\": 5000.0}"),
        ("si_unit_conversion(5, 'um', 'nm')", "{\"result\": 4999.999999999999}"),
        ("si_unit_conversion(2.5, 'cm', 'mm')", "{\"result\": 25.0}"),
        ("si_unit_conversion(3, 'nm', 'km')", "{\"result\": 3.0000000000000005e-12}"),
        ("si_unit_conversion(7, 'm', 'm')", "{\"result\": 7.0}"),
        ("si_unit_conversion(5, 'km', 'mile')", "{\"error\": \"Conversion from 'km' to 'mile' is not supported\"}"),
        ("si_unit_conversion('5', 'km', 'm')", "{\"error\": \"Value must be a number\"}"),
        ("si_unit_conversion(True, 'km', 'cm')", "{\"result\": 100000.0}"),
    ]);
}

#[test]
fn imperial_si_conversion() {
    check(&[
        ("imperial_si_conversion(5, 'm', 'm')", "{\"result\": 5}"),
        ("imperial_si_conversion(5.5, 'kg', 'kg')", "{\"result\": 5.5}"),
        ("imperial_si_conversion(100, 'celsius', 'fahrenheit')", "{\"result\": 212.0}"),
        ("imperial_si_conversion(212, 'fahrenheit', 'celsius')", "{\"result\": 100.0}"),
        ("imperial_si_conversion(98.6, 'fahrenheit', 'celsius')", "{\"result\": 37.0}"),
        ("imperial_si_conversion(10, 'miles', 'km')", "{\"result\": 16.0934}"),
        ("imperial_si_conversion(3.3, 'in', 'cm')", "{\"result\": 8.382}"),
        ("imperial_si_conversion(5, 'm', 'lb')", "{\"error\": \"Conversion from 'm' to 'lb' is not supported\"}"),
        ("imperial_si_conversion(None, 'm', 'ft')", "{\"error\": \"Value must be a number\"}"),
    ]);
}

#[test]
fn add() {
    check(&[
        ("add(1, 2)", "{\"result\": 3}"),
        ("add(1, 2.5)", "{\"result\": 3.5}"),
        ("add(0.1, 0.2)", "{\"result\": 0.30000000000000004}"),
        ("add(9223372036854775807, 1)", "{\"result\": 9223372036854775808}"),
        ("add(1, 'a')", "{\"error\": \"Both inputs must be numbers\"}"),
        ("add('a', 'b')", "{\"result\": \"ab\"}"),
    ]);
}

#[test]
fn subtract() {
    check(&[
        ("subtract(5, 7)", "{\"result\": -2}"),
        ("subtract(5.5, 2)", "{\"result\": 3.5}"),
        ("subtract('a', 1)", "{\"error\": \"Both inputs must be numbers\"}"),
    ]);
}

#[test]
fn multiply() {
    check(&[
        ("multiply(3, 4)", "{\"result\": 12}"),
        ("multiply(3, 0.1)", "{\"result\": 0.30000000000000004}"),
        ("multiply(9223372036854775807, 9223372036854775807)", "{\"result\": 85070591730234615847396907784232501249}"),
        ("multiply('a', 2)", "{\"error\": \"Both inputs must be numbers\"}"),
    ]);
}

#[test]
fn divide() {
    check(&[
        ("divide(1, 0)", "{\"error\": \"Cannot divide by zero\"}"),
        ("divide(1, 0.0)", "{\"error\": \"Cannot divide by zero\"}"),
        ("divide(1, 3)", "{\"result\": 0.3333333333333333}"),
        ("divide(10, 5)", "{\"result\": 2.0}"),
        ("divide(7.5, 2.5)", "{\"result\": 3.0}"),
        ("divide('x', 0)", "{\"error\": \"Cannot divide by zero\"}"),
        ("divide('x', 2)", "{\"error\": \"Both inputs must be numbers\"}"),
    ]);
}

#[test]
fn power() {
    check(&[
        ("power(2, 10)", "{\"result\": 1024}"),
        ("power(2, 100)", "{\"result\": 1267650600228229401496703205376}"),
        ("power(-2, 3)", "{\"result\": -8}"),
        ("power(-3, 63)", "{\"result\": -1144561273430837494885949696427}"),
        ("power(2, -2)", "{\"result\": 0.25}"),
        ("power(0, -1)", "Error during execution: 0.0 cannot be raised to a negative power"),
        ("power(0.0, -1)", "Error during execution: 0.0 cannot be raised to a negative power"),
        ("power(0, 0)", "{\"result\": 1}"),
        ("power(2, 0.5)", "{\"result\": 1.4142135623730951}"),
        ("power(10.0, 400)", "Error during execution: (34, 'Numerical result out of range')"),
        (
            "power(10, 4299)",
            "{\"result\": 1000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000}",
        ),
        (
            "power(10, 4300)",
            "Error during execution: Exceeds the limit (4300 digits) for integer string conversion; use sys.set_int_max_str_digits() to increase the limit",
        ),
        (
            "power(2, 100000)",
            "Error during execution: Exceeds the limit (4300 digits) for integer string conversion; use sys.set_int_max_str_digits() to increase the limit",
        ),
        ("power(-8, 0.3333333333333333)", "{'result': (1.0000000000000002+1.7320508075688772j)}"),
        ("power(-2.0, 0.5)", "{'result': (8.659560562354934e-17+1.4142135623730951j)}"),
        ("power(-1e300, 1.5)", "Error during execution: complex exponentiation"),
        ("power(-8.0, 2.0)", "{\"result\": 64.0}"),
        ("power(2.0, -1074)", "{\"result\": 5e-324}"),
        ("power(3.0, -680)", "{\"result\": 0.0}"),
        ("power(1.5, 2)", "{\"result\": 2.25}"),
        ("power('a', 2)", "{\"error\": \"Both inputs must be numbers\"}"),
    ]);
}

#[test]
fn square_root() {
    check(&[
        ("square_root(2, 10)", "{'result': Decimal('1.414213562')}"),
        ("square_root(4, 10)", "{'result': Decimal('2')}"),
        ("square_root(0.25, 5)", "{'result': Decimal('0.5')}"),
        ("square_root(0, 5)", "{'result': Decimal('0')}"),
        ("square_root(-0.0, 5)", "{'result': Decimal('-0')}"),
        ("square_root(1e40, 5)", "{'result': Decimal('1.0000E+20')}"),
        ("square_root(123456789, 3)", "{'result': Decimal('1.11E+4')}"),
        ("square_root(0.1, 30)", "{'result': Decimal('0.316227766016837941976973025885')}"),
        ("square_root(1e-7, 3)", "{'result': Decimal('0.000316')}"),
        ("square_root(99.99999, 3)", "{'result': Decimal('10.0')}"),
        ("square_root(16, 1)", "{'result': Decimal('4')}"),
        ("square_root(5e-324, 20)", "{'result': Decimal('2.2227587494850774834E-162')}"),
        ("square_root(1.7976931348623157e308, 12)", "{'result': Decimal('1.34078079299E+154')}"),
        ("square_root(2, 0)", "Error during execution: valid range for prec is [1, MAX_PREC]"),
        ("square_root(2, -3)", "Error during execution: valid range for prec is [1, MAX_PREC]"),
        (
            "square_root(2, 2.5)",
            "{\"error\": \"Input must be a number or computation resulted in an invalid operation\"}",
        ),
        ("square_root(-1, 5)", "{\"error\": \"Cannot calculate square root of a negative number\"}"),
        (
            "square_root('a', 5)",
            "{\"error\": \"Input must be a number or computation resulted in an invalid operation\"}",
        ),
    ]);
}

#[test]
fn absolute_value() {
    check(&[
        ("absolute_value(-3)", "{\"result\": 3}"),
        ("absolute_value(-2.5)", "{\"result\": 2.5}"),
        ("absolute_value(True)", "{\"result\": 1}"),
        ("absolute_value('a')", "{\"error\": \"Input must be a number\"}"),
    ]);
}

#[test]
fn round_number() {
    check(&[
        ("round_number(2.5)", "{\"result\": 2.0}"),
        ("round_number(3.5)", "{\"result\": 4.0}"),
        ("round_number(2.675, 2)", "{\"result\": 2.67}"),
        ("round_number(1234.5, -2)", "{\"result\": 1200.0}"),
        ("round_number(15, -1)", "{\"result\": 20}"),
        ("round_number(25, -1)", "{\"result\": 20}"),
        ("round_number(-15, -1)", "{\"result\": -20}"),
        ("round_number(123, -100)", "{\"result\": 0}"),
        ("round_number(5, 2)", "{\"result\": 5}"),
        ("round_number(-0.4)", "{\"result\": -0.0}"),
        ("round_number(2.5, None)", "{\"result\": 2}"),
        ("round_number(-2.5, None)", "{\"result\": -2}"),
        ("round_number(1e20, None)", "{\"result\": 100000000000000000000}"),
        ("round_number(2.5, 1.0)", "{\"error\": \"First input must be a number, second input must be an integer\"}"),
        ("round_number('a', 1)", "{\"error\": \"First input must be a number, second input must be an integer\"}"),
        ("round_number(1.7976931348623157e308, -308)", "Error during execution: rounded value too large to represent"),
        ("round_number(1.5, 400)", "{\"result\": 1.5}"),
        ("round_number(123.456, -400)", "{\"result\": 0.0}"),
        ("round_number(0.1234567890123, 10)", "{\"result\": 0.123456789}"),
        ("round_number(12345678901234567890.5, 2)", "{\"result\": 1.2345678901234567e+19}"),
        (
            "round_number(2.5, 1, 2)",
            "Error during execution: MathAPI.round_number() takes from 2 to 3 positional arguments but 4 were given",
        ),
    ]);
}

#[test]
fn percentage() {
    check(&[
        ("percentage(1, 0)", "{\"error\": \"Whole value cannot be zero\"}"),
        ("percentage(1, 3)", "{\"result\": 33.33333333333333}"),
        ("percentage(25, 200)", "{\"result\": 12.5}"),
        ("percentage(3.5, 7)", "{\"result\": 50.0}"),
        ("percentage('a', 2)", "{\"error\": \"Both inputs must be numbers\"}"),
    ]);
}

#[test]
fn min_value() {
    check(&[
        ("min_value([3, 1, 2])", "{\"result\": 1}"),
        ("min_value([1.0, 1])", "{\"result\": 1.0}"),
        ("min_value(['b', 'a'])", "{\"result\": \"a\"}"),
        ("min_value([None])", "{\"result\": null}"),
        ("min_value([1, 'a'])", "{\"error\": \"All elements in the list must be numbers\"}"),
        ("min_value([])", "{\"error\": \"Cannot find minimum of an empty list\"}"),
    ]);
}

#[test]
fn max_value() {
    check(&[
        ("max_value([1, 1.0])", "{\"result\": 1}"),
        ("max_value([2, 7.5, 7])", "{\"result\": 7.5}"),
        ("max_value([True, 0])", "{\"result\": true}"),
        ("max_value([])", "{\"error\": \"Cannot find maximum of an empty list\"}"),
    ]);
}

#[test]
fn sum_values() {
    check(&[
        ("sum_values([1, 2, 3])", "{\"result\": 6}"),
        ("sum_values([1, 2.5])", "{\"result\": 3.5}"),
        ("sum_values([0.1, 0.2, 0.3])", "{\"result\": 0.6000000000000001}"),
        ("sum_values([9223372036854775807, 9223372036854775807])", "{\"result\": 18446744073709551614}"),
        ("sum_values([])", "{\"error\": \"Cannot calculate sum of an empty list\"}"),
        ("sum_values([1, None])", "{\"error\": \"All elements in the list must be numbers\"}"),
    ]);
}

#[test]
fn lists_its_functions() {
    assert_eq!(MathApi.functions().len(), 17);
    assert!(MathApi.state().is_empty());
}
