"""svmemu's own Unicorn engine: unicorn 2.1.4's source with the patches of this folder
(`*.patch`, each headed by what it changes and why), built by build.py into a per-user cache and
chosen at start-up by loader.py. Nothing here imports unicorn: loader.py must run before it."""
