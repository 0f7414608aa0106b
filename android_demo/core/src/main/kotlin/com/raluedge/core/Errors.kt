package com.raluedge.core

/**
 * A failure the user can cause and fix (bad bundle, tampered file, unknown preset, empty prompt): the message
 * is one sentence naming the thing and the fix. The app shows it as is; anything else is a bug.
 */
class UserError(message: String) : Exception(message)
