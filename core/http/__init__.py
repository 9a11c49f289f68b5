"""The operator console and HTTP API (Starlette app served by uvicorn inside ``mailpipe serve``)."""
