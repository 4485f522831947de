"""Shared FastAPI dependencies: settings, DB sessions, the Celery producer, the file store."""

from __future__ import annotations

from collections.abc import Iterator

from celery import Celery
from fastapi import Request
from sqlalchemy.orm import Session

from kdaudit.store.files import FileStore
from kdaudit.store.settings import ServiceSettings


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_files(request: Request) -> FileStore:
    return request.app.state.files
