"""`python -m transcriber dev|start|download-files`."""

from __future__ import annotations

import sys
import warnings

from dotenv import load_dotenv

from .settings import Settings, SettingsError

USAGE = "usage: python -m transcriber {dev|start|download-files} [options]"


def main(argv: list[str]) -> int:
    load_dotenv()
    command = argv[1] if len(argv) > 1 else ""
    if command == "download-files":
        return _download_files()
    if command not in ("dev", "start"):
        print(USAGE, file=sys.stderr)
        return 2

    try:
        settings = Settings.from_env()
        _import_chosen_plugins(settings)
    except SettingsError as e:
        print(f"transcriber: {e}", file=sys.stderr)
        return 1

    from livekit.agents import cli

    from .worker import build_server

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="livekit.agents")
    cli.run_app(build_server(settings))
    return 0


def _import_chosen_plugins(settings: Settings) -> None:
    """Plugins register on import, in the main process, as livekit-agents requires; a
    chosen provider that is not installed is a setting error, not a crash later."""
    from .stt_providers import check_providers_installed

    check_providers_installed(settings)


def _download_files() -> int:
    """Prefetches the models of every installed plugin (the Dockerfile runs this)."""
    import logging

    from livekit.agents import Plugin

    from .stt_providers import import_all_plugins

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_all_plugins()
    for plugin in Plugin.registered_plugins:
        logging.info("downloading files for %s", plugin.package)
        try:
            plugin.download_files()
        except Exception as e:
            print(f"transcriber: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
