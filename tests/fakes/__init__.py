"""Helpers the tests share, kept out of pytest's collection (no ``test_`` prefix).

    fakes.infer    small ImageTextModels and data items for the harness (no trained model)
    fakes.demo     a runs/ + reports/ tree as ``make eval`` writes it, fake models, the login demo
    fakes.images   a synthetic fundus-like disc, a PNG header that claims a huge size
"""
