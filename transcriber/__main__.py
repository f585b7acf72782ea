"""`python -m transcriber start|dev|connect|download-files`: livekit-agents' commands and
flags, with every setting and LiveKit's answer to the credentials checked first."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings

from dotenv import load_dotenv

from .settings import Settings, SettingsError

COMMANDS = {
    "start": "run the worker: registers with LiveKit and captions the rooms dispatched to it",
    "dev": "the same, in development mode (readable logs, debug level)",
    "connect": "join one room directly, without a dispatch (development)",
    "download-files": "prefetch the models of every installed plugin (the image build runs it)",
}
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")
_FLAG_ENV = {"url": "LIVEKIT_URL", "api_key": "LIVEKIT_API_KEY", "api_secret": "LIVEKIT_API_SECRET"}


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m transcriber",
        description="Live captions for LiveKit meetings.",
        epilog="Settings come from the environment and .env (see .env.example); "
        "--url, --api-key and --api-secret win over them.",
    )
    commands = cli.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in ("start", "dev", "connect"):
        command = commands.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        command.add_argument("--url", help="LiveKit server URL (LIVEKIT_URL)")
        command.add_argument("--api-key", help="LiveKit API key (LIVEKIT_API_KEY)")
        command.add_argument(
            "--api-secret",
            help="LiveKit API secret (LIVEKIT_API_SECRET; the environment keeps it out of "
            "the process list)",
        )
        command.add_argument(
            "--log-level",
            type=str.upper,
            choices=LOG_LEVELS,
            help="default: LIVEKIT_LOG_LEVEL, else INFO (DEBUG for dev and connect)",
        )
        if name == "connect":
            command.add_argument("--room", required=True, metavar="NAME", help="room to join")
    commands.add_parser(
        "download-files", help=COMMANDS["download-files"], description=COMMANDS["download-files"]
    )
    return cli


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])  # exits 0 on --help, 2 on a usage error
    load_dotenv()
    if args.command == "download-files":
        return _download_files()
    for flag, variable in _FLAG_ENV.items():
        if getattr(args, flag):  # job processes inherit the environment, so it carries them
            os.environ[variable] = getattr(args, flag)
    try:
        settings = Settings.from_env()
        _check_before_start(settings)
    except SettingsError as e:
        print(f"transcriber: {e}", file=sys.stderr)
        return 1

    from livekit.agents import cli

    from .worker import build_server

    sys.argv = [argv[0], *_agents_argv(args)]
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="livekit.agents")
    cli.run_app(build_server(settings))
    return 0


def _check_before_start(settings: Settings) -> None:
    """Plugins register on import, in the main process, as livekit-agents requires; a
    chosen provider that is missing or unusable is a setting error, not a crash later."""
    from .preflight import check_livekit_credentials
    from .stt_providers import check_providers_installed

    check_providers_installed(settings)  # first: mistakes found without the network
    asyncio.run(check_livekit_credentials(settings))


def _agents_argv(args: argparse.Namespace) -> list[str]:
    """The command line livekit-agents' own CLI parses (credentials went to the env)."""
    command = [args.command]
    if args.command == "dev":
        command.append("--no-reload")  # removed from livekit-agents; it only warns
    if args.command == "connect":
        command += ["--room", args.room]
    if args.log_level:
        command += ["--log-level", args.log_level]
    return command


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
        except Exception as e:  # any plugin's failure: report it, exit non-zero
            print(f"transcriber: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
