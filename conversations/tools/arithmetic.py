"""Safe arithmetic for the built-in `calculate` tool: the expression's syntax tree is walked,
never eval'd, and every intermediate result is kept small."""

import ast
import math
import operator

MAX_EXPRESSION = 1000  # characters
MAX_DIGITS = 1000  # of any integer, intermediate or final
_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
MAX_FACTORIAL = 450  # 450! has 1001 digits; the bound below catches anything larger anyway

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: float) -> int:
    if not float(n).is_integer() or n < 0:
        raise CalculationError("factorial needs a whole number that is not negative")
    if n > MAX_FACTORIAL:
        raise CalculationError(f"factorial is limited to {MAX_FACTORIAL}")
    return math.factorial(int(n))


def _round(value: float, digits: int = 0) -> int | float:
    if not isinstance(digits, int) or abs(digits) > 100:
        raise CalculationError("round() takes a whole number of digits between -100 and 100")
    return round(value, digits) if digits else round(value)


_FUNCTIONS = {
    "sqrt": math.sqrt,
    "cbrt": math.cbrt,
    "exp": math.exp,
    "log": math.log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "floor": math.floor,
    "ceil": math.ceil,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "factorial": _factorial,
}


class CalculationError(ValueError):
    """The expression is not allowed or has no value; the message says why."""


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression such as `2 * (3 + 4) ** 2 / sqrt(16)`."""
    if len(expression) > MAX_EXPRESSION:
        raise CalculationError(f"the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"not a valid expression ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise CalculationError("the expression is nested too deeply") from None
    try:
        return _evaluate(tree.body)
    except ZeroDivisionError:
        raise CalculationError("division by zero") from None
    except OverflowError:
        raise CalculationError("the result is too large") from None
    except RecursionError:
        raise CalculationError("the expression is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CalculationError):
            raise
        raise CalculationError(f"no value: {exc}") from None


def _evaluate(node: ast.AST) -> int | float:
    match node:
        case ast.Constant(value=bool()) | ast.Constant(value=complex()):
            raise CalculationError(f"{node.value!r} is not a real number")
        case ast.Constant(value=int() | float() as value):
            return _checked(value)
        case ast.Constant():
            raise CalculationError(f"{node.value!r} is not a number")
        case ast.Name(id=name):
            if name in _CONSTANTS:
                return _CONSTANTS[name]
            raise CalculationError(f"unknown name {name!r}")
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _checked(_UNARY[type(op)](_evaluate(operand)))
        case ast.BinOp(op=ast.Pow(), left=left, right=right):
            return _power(_evaluate(left), _evaluate(right))
        case ast.BinOp(op=ast.BitXor()):
            raise CalculationError("^ is not a power here; write ** (as in 2 ** 10)")
        case ast.BinOp(op=op, left=left, right=right) if type(op) in _BINARY:
            return _checked(_BINARY[type(op)](_evaluate(left), _evaluate(right)))
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
            if any(isinstance(arg, ast.Starred) for arg in args):
                raise CalculationError("* arguments are not allowed")
            return _checked(_FUNCTIONS[name](*(_evaluate(arg) for arg in args)))
        case ast.Call(func=ast.Name(id=name)):
            if name in _FUNCTIONS:
                raise CalculationError(f"{name}() takes no keyword arguments")
            raise CalculationError(f"unknown function {name!r}")
        case ast.Call(func=ast.Attribute()):
            raise CalculationError("attribute access is not allowed")
        case ast.Call():
            raise CalculationError("only the listed math functions may be called")
        case ast.Attribute():
            raise CalculationError("attribute access is not allowed")
    raise CalculationError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _power(base: int | float, exponent: int | float) -> int | float:
    whole = isinstance(base, int) and isinstance(exponent, int)
    # Estimate before computing: 9 ** 9 ** 9 is refused here, not after minutes of work.
    if whole and exponent > 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > _MAX_BITS:
        raise CalculationError(f"the result would have more than {MAX_DIGITS} digits")
    return _checked(base**exponent)


def _checked(value: int | float) -> int | float:
    if isinstance(value, complex):
        raise CalculationError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise CalculationError(f"the result would have more than {MAX_DIGITS} digits")
    if isinstance(value, float) and math.isnan(value):
        raise CalculationError("the result is not a number")
    if isinstance(value, float) and math.isinf(value):
        raise CalculationError("the result is too large")
    return value
