"""Compiling mapping rules (plain data) into Python closures, once, at load: rules, conditions,
producers, datatype and segment maps, memoization."""
