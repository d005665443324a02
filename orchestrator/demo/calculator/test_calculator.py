from calculator import add, multiply, subtract


def test_multiply_small_numbers():
    assert multiply(3, 4) == 12


def test_multiply_by_zero():
    assert multiply(7, 0) == 0


def test_multiply_negative():
    assert multiply(-2, 5) == -10


def test_add_and_subtract_still_work():
    assert add(2, 2) == 4
    assert subtract(5, 3) == 2
