"""The ingest pipeline: sources publish library events on the bus; the consumer runtime delivers them, in
order per file, to the event handlers, which analyse and store; replay runs the library's events again."""
