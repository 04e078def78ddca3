"""What is pinned to the Unicorn engine's internals. Must not import unicorn at package level:
emu/__init__.py imports unicorn_build.loader from here before anything loads the binding."""
