// The ralu-edge Android demo: `app` (the Android application, ONNX Runtime Android) and `core` (pure Kotlin,
// no Android dependency: all host-side logic, tested on the JVM against the conformance vectors).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "ralu-edge-demo"
include(":core", ":app")
