"""``python -m backend``: the ``splatsmith`` command (``backend.launch``)."""
import signal

from .stop_signals import stops

# Before anything else is imported (backend.launch imports only the signal module).
signal.signal(signal.SIGINT, stops.handler)
signal.signal(signal.SIGTERM, stops.handler)

from .launch import main  # noqa: E402

main()
