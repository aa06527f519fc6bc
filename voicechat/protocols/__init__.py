"""Wire protocols over the session core: protocol v1 and the OpenAI Realtime API."""
