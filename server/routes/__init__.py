"""Thin routers: validate, call Serving or the app state, shape the answer."""
