#!/usr/bin/env bash
# Install the real servers the integration tests start (none is started here).
# Placeholder until discovery lands: nothing to install yet.
exit 0
