"""A tiny calculator with a bug for airlock's demo: multiply adds instead."""


def add(a, b):
    return a + b


def subtract(a, b):
    return a - b


def multiply(a, b):
    return a + b
