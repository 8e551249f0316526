"""The Study tab: a participant id, then one blinded trial after another, each stored as it is submitted.

A returning participant (the id is kept in the browser, or typed in again) resumes at their
first unanswered trial; "New participant" makes a shared computer forget the last one. The page
never receives a system name: the server looks the trial up by participant and position, and the
player gets a blinded file. Recorded trials whose clip or system has since left the study file
are skipped, so a returning participant is never stuck on media that can no longer be made.
"""
from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from expotion.app.study import Study, trial_media, trial_order
from expotion.app.study_store import AlreadyAnswered, StudyStore, Trial

PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialView:
    """What the participant sees of one trial."""

    position: int  # in the recorded order: what a submission names
    number: int  # 1-based place among the participant's current trials: what the page shows
    total: int
    video: Path
    caption: str


@dataclass(frozen=True)
class Finished:
    """Every one of the participant's current trials is answered."""

    total: int


class TrialRemoved(ValueError):
    """The submitted trial's clip or system is no longer in the study file."""


class StudyRunner:
    """The study's server side: trial orders, blinded media and responses; callable from any thread."""

    def __init__(self, study: Study):
        self.study = study
        self.store = StudyStore(study.database)
        self.secret = self.store.secret()
        self.order_secret = self.store.order_secret()
        self.browser_secret = self.store.browser_secret()

    def trials(self, participant: str) -> list[Trial]:
        return self.store.trials(participant, trial_order(self.study, self.order_secret, participant))

    def in_study(self, trial: Trial) -> bool:
        return trial.clip in self.study.clips and trial.system in self.study.systems

    def current_trials(self, participant: str) -> list[Trial]:
        """The participant's recorded trials whose clip and system are still in the study file.

        The order was recorded when they started; a clip or system the researcher has removed since
        has no media to show, so its trials are skipped (and logged).
        """
        trials = self.trials(participant)
        current = [t for t in trials if self.in_study(t)]
        if len(current) < len(trials):
            log.info("participant '%s': skipping %d recorded trials whose clip or system is no longer in %s",
                     participant, len(trials) - len(current), self.study.path)
        return current

    def next_trial(self, participant: str) -> TrialView | Finished:
        """The participant's first unanswered current trial (recording their order if they are new)."""
        trials = self.current_trials(participant)
        answered = self.store.answered_positions(participant)
        for number, trial in enumerate(trials, start=1):
            if trial.position not in answered:
                return self.view(trial, number, len(trials))
        return Finished(len(trials))

    def view(self, trial: Trial, number: int, total: int) -> TrialView:
        video = trial_media(self.study, self.secret, trial.clip, trial.system)
        return TrialView(trial.position, number, total, video, self.study.captions.get(trial.clip, ""))

    def submit(self, participant: str, position: int, scores: dict[str, int]) -> TrialView | Finished:
        """Store one trial's answers in one transaction and return the next trial."""
        trials = self.trials(participant)
        if not 0 <= position < len(trials):
            raise ValueError(f"there is no trial {position + 1} for participant '{participant}'")
        if not self.in_study(trials[position]):
            raise TrialRemoved(f"trial {position + 1} is no longer part of the study")
        self.store.submit(participant, trials[position], scores)
        return self.next_trial(participant)


def check_participant(text: str | None) -> str:
    participant = (text or "").strip()
    if not PARTICIPANT_ID.match(participant):
        raise gr.Error("A participant id is 1–64 letters, digits, '-' or '_'. Leave it empty to get a new one.")
    return participant


def remembered(participant: str) -> dict[str, str]:
    """The browser's stored value: a dict, because Gradio leaves localStorage unchanged when given a
    falsy value, so a bare '' could never replace the last participant's id."""
    return {"participant": participant}


def build_study_tab(runner: StudyRunner, page: gr.Blocks) -> None:
    """Lay out the tab inside ``page`` and wire its events (``page.load`` resumes a remembered participant)."""
    study = runner.study
    low, high = study.scale
    stored_id = gr.BrowserState(remembered(""), storage_key="study-participant", secret=runner.browser_secret)
    gr.Markdown(f"## {study.title}\n"
                "Watch each video with its music, then rate the music on every question "
                f"({low} = lowest, {high} = highest). Your answers are saved after every trial, so you can "
                "stop and come back later with the same participant id.")
    with gr.Row():
        participant_box = gr.Textbox(label="Participant id", placeholder="leave empty to get a new id", scale=3,
                                     elem_id="study-participant")
        start = gr.Button("Start / resume", variant="primary", scale=1, elem_id="study-start")
        forget = gr.Button("New participant", scale=1, elem_id="study-new")
    participant, position = gr.State(""), gr.State(-1)
    with gr.Column(visible=False) as trial_box:
        header = gr.Markdown(elem_id="study-header")
        video = gr.Video(label="Video with music", interactive=False, height=420, elem_id="study-video")
        prompt = gr.Markdown(elem_id="study-prompt")
        radios = [gr.Radio([str(v) for v in range(low, high + 1)], label=q.text, elem_id=f"study-q-{q.id}")
                  for q in study.questions]
        submit = gr.Button("Submit and continue", variant="primary", elem_id="study-submit")
    finished = gr.Markdown(visible=False, elem_id="study-done")
    outputs = [stored_id, participant, participant_box, position, trial_box, header, video, prompt, *radios, finished]

    def show(who: str, view: TrialView | Finished) -> tuple:
        clear = [None] * len(radios)
        if isinstance(view, Finished):
            done = f"All {view.total} trials are done. Thank you, participant **{who}**!"
            return (remembered(who), who, who, -1, gr.update(visible=False), "", None, "", *clear,
                    gr.update(value=done, visible=True))
        header_text = (f"**Trial {view.number} of {view.total}** · participant `{who}` "
                       "(keep this id to resume later)")
        caption = f"**Text prompt:** {view.caption}" if view.caption else ""
        return (remembered(who), who, who, view.position, gr.update(visible=True), header_text, str(view.video),
                caption, *clear, gr.update(value="", visible=False))

    def on_forget() -> tuple:
        """A shared computer, next person: forget the remembered id and clear the page."""
        return (remembered(""), "", "", -1, gr.update(visible=False), "", None, "", *[None] * len(radios),
                gr.update(value="", visible=False))

    def on_start(text: str | None) -> tuple:
        who = check_participant(text) if (text or "").strip() else f"p-{secrets.token_hex(4)}"
        return show(who, runner.next_trial(who))

    def on_load(stored: dict | None) -> tuple:
        who = stored.get("participant") if isinstance(stored, dict) else None
        if not isinstance(who, str) or not PARTICIPANT_ID.match(who):
            return (gr.skip(),) * len(outputs)
        return show(who, runner.next_trial(who))

    def on_submit(who: str, at: int, *answers: str | None) -> tuple:
        if not who or at < 0:
            raise gr.Error("Press 'Start / resume' first.")
        missing = [q.label for q, a in zip(study.questions, answers, strict=True) if a is None]
        if missing:
            raise gr.Error(f"Please answer every question before continuing (missing: {', '.join(missing)}).")
        scores = {q.id: int(a) for q, a in zip(study.questions, answers, strict=True)}
        try:
            view = runner.submit(who, int(at), scores)
        except AlreadyAnswered:
            gr.Warning("That trial was already saved; here is your next one.")
            view = runner.next_trial(who)
        except TrialRemoved:
            gr.Warning("That trial was taken out of the study; here is your next one.")
            view = runner.next_trial(who)
        return show(who, view)

    # Light, short handlers: they need not wait behind a generation in the one-at-a-time queue.
    start.click(on_start, participant_box, outputs, api_name="study_start", concurrency_limit=8)
    participant_box.submit(on_start, participant_box, outputs, api_name=False, concurrency_limit=8)
    forget.click(on_forget, None, outputs, api_name="study_new_participant", concurrency_limit=8)
    submit.click(on_submit, [participant, position, *radios], outputs, api_name="study_submit", concurrency_limit=8)
    page.load(on_load, stored_id, outputs, api_name=False, concurrency_limit=8)
