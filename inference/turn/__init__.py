"""The turn pipeline: one NPC turn from "an NPC must answer" to "remembered and observed".

Read it in this order:

1. `plan`: the tier (positions, the region's token budget, or the default), its sampling
   (inference.sampling), the dialogue adapter, the turn's id and start.
2. `inputs`: the NPC's memory of the player, its recent turns with them, the lore that bears on
   what was said; what Redis lacks is queued for a rebuild (`background.enqueue_once`).
3. `play`: the model, streamed, with the guardrails and every fallback (bark, base model).
4. `remember`: the trace, the turn into memory, the ops figures, the observers.

`pipeline.turn_take` runs the four stages; the game websocket (bridge.consumers), `manage.py
npc_say` and a traced turn's replay (`replay.turn_replay`) all call it. Session I/O (frames,
busy NPCs, caps) stays with the caller, behind `pipeline.TurnIO`.

Layering: this package may import memory, the rest of inference and the console's domain;
nothing in memory or the rest of inference imports it.
"""
