"""Components registered from outside the library, one small package each.

Each project is importable as ``projects.<Name>.<package>`` when the repository root is on
``sys.path`` (the tools under ``tools/`` put it there); its configs name that module in
``CUSTOM_IMPORTS``. Nothing here is imported by ``retinakit`` itself.
"""
