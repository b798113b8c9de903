"""The admin's own pages: the token usage overview and the JSON export of conversations.

Every figure is aggregated by the database (see ``MessageQuerySet.usage_*``); the
Python here only lays out a few rows per day, user or model.
"""

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header

from .models import AdminAccessRecord, Message

DEFAULT_PERIOD_DAYS = 30
LONGEST_PERIOD_DAYS = 366


def day_start(day: date) -> datetime:
    """Midnight at the start of ``day`` in the current time zone."""
    return timezone.make_aware(datetime.combine(day, time.min))


class PeriodForm(forms.Form):
    date_from = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", widget=forms.DateInput(attrs={"type": "date"}))

    @classmethod
    def from_query(cls, query) -> "PeriodForm":
        """The period asked for in the query string; by default the last 30 days."""
        today = timezone.localdate()
        data = {
            "date_from": (today - timedelta(days=DEFAULT_PERIOD_DAYS - 1)).isoformat(),
            "date_to": today.isoformat(),
        }
        data.update((name, value) for name, value in query.items() if name in data and value)
        return cls(data)

    def clean(self):
        cleaned = super().clean()
        first, last = cleaned.get("date_from"), cleaned.get("date_to")
        if first and last:
            if last >= date.max - timedelta(days=1) or first <= date.min + timedelta(days=1):
                # The period's end is the next day's start, and the chart's axis goes on.
                raise forms.ValidationError("Choose dates between the years 1 and 9999.")
            if last < first:
                raise forms.ValidationError("The period ends before it starts.")
            if (last - first).days >= LONGEST_PERIOD_DAYS:
                raise forms.ValidationError(
                    f"Choose a period of at most {LONGEST_PERIOD_DAYS} days."
                )
        return cleaned

    @property
    def days(self) -> list[date]:
        first, last = self.cleaned_data["date_from"], self.cleaned_data["date_to"]
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    @property
    def period(self) -> tuple[datetime, datetime]:
        """[start, end) of the chosen days, as aware datetimes."""
        return (
            day_start(self.cleaned_data["date_from"]),
            day_start(self.cleaned_data["date_to"] + timedelta(days=1)),
        )


def usage_overview(request, model_admin):
    """Tokens per day, user and model, and failed and interrupted replies, for a period."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = PeriodForm.from_query(request.GET)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Token usage",
        "form": form,
    }
    if form.is_valid():
        messages = Message.objects.created_between(*form.period)
        per_day = list(messages.usage_per_day())
        for row in per_day:
            row["failed_url"] = message_list_url(row["day"], status__exact="failed")
            row["interrupted_url"] = message_list_url(row["day"], status__exact="interrupted")
        context.update(
            totals=messages.usage_totals(),
            per_day=per_day,
            per_user=list(messages.usage_per_user()),
            per_model=list(messages.usage_per_model()),
            chart=TokenChart.build(form.days, per_day),
        )
    return TemplateResponse(request, "admin/conversations/usage_overview.html", context)


def message_list_url(day: date, **filters) -> str:
    """The admin's message list, filtered to one day and ``filters``."""
    period = {
        "created_at__gte": day_start(day).isoformat(),
        "created_at__lt": day_start(day + timedelta(days=1)).isoformat(),
    }
    return reverse("admin:conversations_message_changelist") + "?" + urlencode(period | filters)


# --- the chart: SVG geometry, computed here so the template only places shapes ---------


@dataclass
class Bar:
    day: date
    prompt: int
    completion: int
    x: float
    width: float
    prompt_y: float
    prompt_height: float
    completion_y: float
    completion_height: float


@dataclass
class Tick:
    label: str
    x: float = 0.0
    y: float = 0.0


@dataclass
class TokenChart:
    """A bar per day, prompt tokens stacked under completion tokens."""

    bars: list[Bar]
    gridlines: list[Tick]
    day_labels: list[Tick]

    width = 960
    height = 260
    left = 72  # room for the token axis labels
    right = 952
    top = 30  # room for the legend
    bottom = 230  # the baseline; day labels go below it

    @classmethod
    def build(cls, days: list[date], per_day: list[dict]) -> "TokenChart":
        by_day = {row["day"]: row for row in per_day}
        highest = max((row["prompt"] + row["completion"] for row in per_day), default=0)
        step = tick_step(highest)
        scale = (cls.bottom - cls.top) / (4 * step)
        band = (cls.right - cls.left) / len(days)

        bars = []
        for index, day in enumerate(days):
            row = by_day.get(day)
            if row is None or row["prompt"] + row["completion"] == 0:
                continue
            prompt_height = row["prompt"] * scale
            completion_height = row["completion"] * scale
            bars.append(
                Bar(
                    day=day,
                    prompt=row["prompt"],
                    completion=row["completion"],
                    x=round(cls.left + index * band + band * 0.1, 1),
                    width=round(band * 0.8, 1),
                    prompt_y=round(cls.bottom - prompt_height, 1),
                    prompt_height=round(prompt_height, 1),
                    completion_y=round(cls.bottom - prompt_height - completion_height, 1),
                    completion_height=round(completion_height, 1),
                )
            )

        gridlines = [
            Tick(label=f"{step * n:,}", y=round(cls.bottom - step * n * scale, 1)) for n in range(5)
        ]
        every = math.ceil(len(days) / 10)
        day_labels = [
            Tick(label=f"{day:%b} {day.day}", x=round(cls.left + (index + 0.5) * band, 1))
            for index, day in enumerate(days)
            if index % every == 0
        ]
        return cls(bars=bars, gridlines=gridlines, day_labels=day_labels)


def tick_step(highest: int) -> int:
    """A tidy whole step (1, 2, 2.5 or 5 x 10^n) such that four steps reach ``highest``."""
    target = max(highest / 4, 1)
    magnitude = 10 ** math.floor(math.log10(target))
    for factor in (1, 2, 2.5, 5):
        step = factor * magnitude
        if step >= target and step == int(step):
            return int(step)
    return 10 * magnitude


# --- export ----------------------------------------------------------------------------


def export_conversations(request, queryset):
    """The conversations with their messages and usage, as a JSON download.

    Each conversation is :meth:`Conversation.export`, the same document its owner
    downloads; nothing about the site's configuration (such as the upstream's API
    key) is part of a conversation, so none can leak.
    """
    conversations = list(queryset.select_related("owner").prefetch_related("messages"))
    AdminAccessRecord.objects.record(request.user, conversations, AdminAccessRecord.Action.EXPORTED)
    document = {
        "exported_at": timezone.now(),
        "exported_by": request.user.get_username(),
        "conversations": [conversation.export() for conversation in conversations],
    }
    response = JsonResponse(document, json_dumps_params={"indent": 2})
    filename = f"conversations-{timezone.now():%Y%m%d-%H%M%S}.json"
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response
